"""A datum's private `/pfs`: its input files downloaded under `<input>/<path>`, an empty `out/`, and
what the user code left in `out/` uploaded as one layer. Blocking: call it in a thread.

Paths keep their full repo path, as in Pachyderm: the input's root is `/pfs/<input>`, so the file
`/dir/a.png` of input `images` is `/pfs/images/dir/a.png`, whatever the glob matched.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from hw_events.pps import TaskInput
from hw_storage.blobs import BlobStore
from hw_storage.download import read_ranges
from hw_storage.trees import TreeCache
from hw_storage.upload import Upload


@dataclass(frozen=True)
class Output:
    layer: str  # "" when the datum wrote nothing
    files: int
    bytes: int


class Scratch:
    """Where datums' `/pfs` directories are made, and the object store their files come from."""

    def __init__(self, store: BlobStore, root: str) -> None:
        self.store = store
        self.root = root
        self.trees = TreeCache(store, max_views=16)
        os.makedirs(root, exist_ok=True)

    def prepare(self, name: str, inputs: list[TaskInput]) -> tuple[str, int]:
        """A fresh `<root>/<name>/pfs` with the inputs and an empty `out`; (its path, bytes read)."""
        pfs = os.path.join(self.root, name, "pfs")
        shutil.rmtree(os.path.dirname(pfs), ignore_errors=True)
        os.makedirs(os.path.join(pfs, "out"))
        read = 0
        for given in inputs:
            base = os.path.join(pfs, given.name)
            os.makedirs(base, exist_ok=True)
            view = self.trees.view(tuple(given.layers))
            for path, record in view.walk(given.path):
                local = os.path.join(base, path.lstrip("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as f:
                    for piece in read_ranges(self.store, record.chunks):
                        f.write(piece)
                read += record.size
        return pfs, read

    def upload_out(self, pfs: str, *, clean: str = "") -> Output:
        """Store everything under `<pfs>/out` as one layer (paths relative to `out`); then, with
        `clean`, remove that datum's folder (one trip to a thread instead of two)."""
        try:
            return self._upload_out(pfs)
        finally:
            if clean:
                self.clean(clean)

    def _upload_out(self, pfs: str) -> Output:
        out = os.path.join(pfs, "out")
        found: list[tuple[str, str]] = []
        for directory, _, files in os.walk(out):
            for file in files:
                local = os.path.join(directory, file)
                if os.path.isfile(local):  # a dangling symlink or a socket holds no content
                    found.append(("/" + os.path.relpath(local, out), local))
        if not found:
            return Output("", 0, 0)
        upload = Upload(self.store)
        try:
            for path, local in sorted(found):
                upload.add_file(path, local)
            done = upload.finish()
        except BaseException:
            upload.abort()
            raise
        return Output(done.layer, done.files, done.bytes)

    def clean(self, name: str) -> None:
        shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)


def sweep_stale(root: str) -> None:
    """Remove the scratch folders (`<root>/<pid>`) of worker processes that no longer run."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name.isdigit() and not _alive(int(name)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
