"""The files of a commit: its layers merged, with directories derived from file paths.

A directory exists while a file is under it (as in Pachyderm: there are no empty directories).
A path is never both a file and a directory; a change that would make it so is refused.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from hw_events.errors import UserError
from hw_storage import paths
from hw_storage.layers import APPEND, DELETE, PUT, ChunkRange, Entry, Layer


class FileRecord(NamedTuple):
    size: int
    chunks: tuple[ChunkRange, ...]
    hash: str = ""  # BLAKE3 of the bytes, "" when unknown (after an append)

    def same_content(self, other: FileRecord) -> bool:
        """Equal bytes: by hash when both are known, else by the chunk ranges holding them."""
        if self.size != other.size:
            return False
        if self.hash and other.hash:
            return self.hash == other.hash
        return self.chunks == other.chunks


class Node(NamedTuple):
    """A file or directory as listings show it."""

    path: str
    type: str  # "file" or "dir"
    size_bytes: int


class TreeView:
    """Mutable while layers are applied, then read; `files` maps path -> FileRecord."""

    def __init__(self) -> None:
        self.files: dict[str, FileRecord] = {}
        self._dirs: dict[str, list[int]] = {"/": [0, 0]}  # dir -> [files under it, bytes under it]
        self._sorted: list[str] | None = None

    @classmethod
    def of(cls, layers: Iterable[Layer]) -> TreeView:
        view = cls()
        for layer in layers:
            view.apply(layer)
        return view

    def copy(self) -> TreeView:
        view = TreeView()
        view.files = dict(self.files)
        view._dirs = {d: list(v) for d, v in self._dirs.items()}
        return view

    # --- changing ----------------------------------------------------------------------------------

    def apply(self, layer: Layer) -> None:
        self._sorted = None
        for entry in layer.entries:
            if entry.op == DELETE:
                self._delete(entry.path)
            elif entry.op == APPEND and entry.path in self.files:
                old = self.files[entry.path]
                self._put(entry.path, FileRecord(old.size + entry.size, old.chunks + entry.chunks))
            elif entry.op in (PUT, APPEND):
                self._put(entry.path, FileRecord(entry.size, entry.chunks, entry.hash))
            else:
                raise UserError(f"a layer holds an unknown operation {entry.op} for {entry.path}")

    def _put(self, path: str, record: FileRecord) -> None:
        if path == "/" or path in self._dirs:
            raise UserError(f'cannot write file "{path}": it is a directory')
        old = self.files.get(path)
        if old is None:
            for ancestor in paths.ancestors(path):
                if ancestor in self.files:
                    raise UserError(f'cannot write file "{path}": "{ancestor}" is a file')
        self.files[path] = record
        delta_count, delta_size = (0, record.size - old.size) if old else (1, record.size)
        for ancestor in paths.ancestors(path):
            counts = self._dirs.setdefault(ancestor, [0, 0])
            counts[0] += delta_count
            counts[1] += delta_size

    def _remove(self, path: str) -> None:
        record = self.files.pop(path)
        for ancestor in paths.ancestors(path):
            counts = self._dirs[ancestor]
            counts[0] -= 1
            counts[1] -= record.size
            if counts[0] == 0 and ancestor != "/":
                del self._dirs[ancestor]

    def _delete(self, path: str) -> None:
        if path in self.files:
            self._remove(path)
        elif path in self._dirs:
            for inside in [p for p in self.files if paths.under(path, p)]:
                self._remove(inside)

    # --- reading -----------------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return self._dirs["/"][1]

    @property
    def count(self) -> int:
        return len(self.files)

    def sorted_paths(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.files)
        return self._sorted

    def node(self, path: str) -> Node | None:
        if path in self.files:
            return Node(path, "file", self.files[path].size)
        if path in self._dirs:
            return Node(path, "dir", self._dirs[path][1])
        return None

    def walk(self, directory: str) -> Iterator[tuple[str, FileRecord]]:
        """Files at or under `directory`, in path order."""
        if directory in self.files:
            yield directory, self.files[directory]
            return
        keys = self.sorted_paths()
        prefix = "/" if directory == "/" else directory + "/"
        for path in keys[bisect.bisect_left(keys, prefix) :]:
            if not path.startswith(prefix):
                break
            yield path, self.files[path]

    def children(self, directory: str) -> list[Node]:
        """What `list file` shows for a directory: its direct entries, sorted by name."""
        seen: dict[str, Node] = {}
        base = "" if directory == "/" else directory
        for path, _ in self.walk(directory):
            name = path[len(base) + 1 :].split("/", 1)[0]
            child = f"{base}/{name}"
            if child not in seen:
                seen[child] = self.node(child)  # type: ignore[assignment]
        return list(seen.values())

    def glob(self, pattern: str) -> list[Node]:
        """Files and directories whose path matches `pattern`, sorted by path."""
        regex = paths.glob_regex(pattern)
        root = pattern.strip("/") == ""  # only "/" itself names the root; `*` needs a name
        found = [Node(p, "dir", v[1]) for p, v in self._dirs.items() if regex.match(p) and (p != "/" or root)]
        found += [Node(p, "file", r.size) for p, r in self.files.items() if regex.match(p)]
        return sorted(found)

    def changes_since(self, old: TreeView) -> tuple[list[Node], list[Node]]:
        """(in self, not alike in old) and (in old, not alike in self): files that differ, and the
        directories containing them, as `diff file` shows them."""
        new_side: dict[str, Node] = {}
        old_side: dict[str, Node] = {}
        for mine, theirs, on_mine, on_theirs in (
            (self, old, new_side, old_side),
            (old, self, old_side, new_side),
        ):
            for path, record in mine.files.items():
                other = theirs.files.get(path)
                if other is not None and other.same_content(record):
                    continue
                on_mine[path] = Node(path, "file", record.size)
                for d in paths.ancestors(path):  # the directories holding a change, on each side
                    on_mine.setdefault(d, mine.node(d))  # type: ignore[arg-type]
                    if d in theirs._dirs:
                        on_theirs.setdefault(d, theirs.node(d))  # type: ignore[arg-type]
        return sorted(new_side.values()), sorted(old_side.values())

    def as_layer(self) -> Layer:
        """All files as one layer of puts: what compaction stores."""
        return Layer(
            entries=tuple(Entry(p, PUT, r.size, r.chunks, r.hash) for p, r in sorted(self.files.items()))
        )
