"""A datum's private `/pfs`: its input files downloaded under `<input>/<path>`, an empty `out/`, and
what the user code left in `out/` uploaded as one layer. Blocking: call it in a thread.

The folders are used again from datum to datum (emptied in between): making and removing a
folder tree per datum cost more than the rest of the bookkeeping of a quick datum.

Paths keep their full repo path, as in Pachyderm: the input's root is `/pfs/<input>`, so the file
`/dir/a.png` of input `images` is `/pfs/images/dir/a.png`, whatever the glob matched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
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
        self._free: list[str] = []  # emptied folders, ready for the next datum
        self._made = 0
        self._lock = threading.Lock()  # prepare and release run in threads
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)

    def prepare(self, inputs: list[TaskInput]) -> tuple[str, int]:
        """A `pfs` folder holding only the inputs and an empty `out`; (its path, bytes read).
        Give it back with `release` (or `upload_out`) once done with it."""
        pfs = self._take()
        try:
            return pfs, self._download(pfs, inputs)
        except BaseException:
            self.release(pfs)
            raise

    def _take(self) -> str:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._made += 1
            pfs = os.path.join(self.root, str(self._made))
        os.makedirs(os.path.join(pfs, "out"))
        return pfs

    def _download(self, pfs: str, inputs: list[TaskInput]) -> int:
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
        return read

    def release(self, pfs: str) -> None:
        """Empty the folder for the next datum: everything goes, and `out` is made anew (a new
        folder, with the default mode: whatever still holds the old one, such as a process that
        escaped its datum's process group, writes where no datum reads)."""
        try:
            with os.scandir(pfs) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
            os.makedirs(os.path.join(pfs, "out"))
        except OSError:  # left in a state it cannot be emptied from: not used again
            shutil.rmtree(pfs, ignore_errors=True)
            return
        with self._lock:
            self._free.append(pfs)

    def upload_out(self, pfs: str, *, release: bool = False) -> Output:
        """Store everything under `<pfs>/out` as one layer (paths relative to `out`); then, with
        `release`, give the folder back (one trip to a thread instead of two)."""
        try:
            return self._upload_out(pfs)
        finally:
            if release:
                self.release(pfs)

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


def empty_out(pfs: str) -> None:
    """`<pfs>/out` made anew (what a failed attempt wrote goes before the next; user code may
    have made it a file or a link)."""
    out = os.path.join(pfs, "out")
    if os.path.isdir(out) and not os.path.islink(out):
        shutil.rmtree(out)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)
    os.makedirs(out)


def sweep_stale(root: str) -> None:
    """Remove the scratch folders (`<root>/<pid>`) of worker processes that no longer run."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name.isdigit() and not alive(int(name)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether a process `pid` runs (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
