"""Uploading files: stream them through the chunker, store the chunks, describe them in a layer.

Small files of one upload go through one chunk stream, so many of them share a few chunks (not
one object each). A large local file starts a chunk stream of its own (so the same file always
gives the same chunks) and is cut straight from a memory map: its bytes are hashed and written
from the page cache without being copied. Chunks are hashed and stored by a few threads while the
next bytes are read and cut; at most `threads * 2` chunks wait. A file's entry lists the ranges
of chunks that hold its bytes.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

import blake3

from hw_events.errors import UserError
from hw_storage import layers
from hw_storage.blobs import CHUNKS, BlobStore, content_key
from hw_storage.chunking import Chunker, cut_points
from hw_storage.layers import APPEND, PUT, ChunkRange, Entry, Layer

READ_SIZE = 4 << 20


@dataclass
class _OpenFile:
    path: str
    op: int
    start: int  # stream offset of its first byte
    end: int = -1  # known once its last byte is fed
    ranges: list[tuple[int, int, int]] = field(default_factory=list)  # (chunk index, offset, length)
    hash: str | Future[str] = ""  # of its bytes (a future while a large file's is computed)


@dataclass(frozen=True)
class Uploaded:
    """What an upload produced: its layer's key, and how many files and bytes it holds."""

    layer: str
    files: int
    bytes: int


class Upload:
    """One batch of files going into the object store. Not thread-safe: one caller feeds it."""

    def __init__(
        self,
        store: BlobStore,
        *,
        threads: int = 4,
        chunker: Chunker | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._chunker = chunker or Chunker()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hw-upload")
        self._slots = threading.BoundedSemaphore(threads * 2)
        self._chunks: list[Future[str]] = []  # chunk index -> key, once stored
        self._chunk_start = 0  # stream offset of the next chunk the chunker will emit
        self._offset = 0  # stream offset of the next byte fed
        self._open: list[_OpenFile] = []  # files with bytes not yet in an emitted chunk
        self._entries: list[tuple[_OpenFile, int]] = []  # (file, size) once all its bytes are placed
        self._progress = progress
        self.bytes = 0

    def add(self, path: str, source: BinaryIO | bytes, *, append: bool = False) -> None:
        """Add a file's contents (a binary stream, read to its end, or bytes) at `path`."""
        record = _OpenFile(path, APPEND if append else PUT, self._offset)
        self._open.append(record)
        hasher = blake3.blake3()
        if isinstance(source, bytes):
            hasher.update(source)
            self._feed(source)
        else:
            while block := source.read(READ_SIZE):
                hasher.update(block)
                self._feed(block)
        record.end = self._offset
        record.hash = hasher.hexdigest()
        if record.end == record.start:  # empty file: nothing to wait for
            self._open.remove(record)
            self._entries.append((record, 0))

    def add_file(self, path: str, local: str, *, append: bool = False) -> None:
        """Add a local file; large ones are cut from a memory map, with no copy of their bytes."""
        with open(local, "rb") as f:
            before = os.fstat(f.fileno())
            if before.st_size < 2 * self._chunker.max_size:
                self.add(path, f, append=append)
                return
            self._add_mapped(path, f, before, append=append)

    def _add_mapped(self, path: str, f: BinaryIO, before: os.stat_result, *, append: bool) -> None:
        for chunk in self._chunker.finish():  # what small files left: a large file starts afresh
            self._emit(chunk)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
            size = len(mapped)
            record = _OpenFile(path, APPEND if append else PUT, self._offset, self._offset + size)
            self._open.append(record)
            view = memoryview(mapped)
            pending = [self._pool.submit(_hash_whole, view)]
            record.hash = pending[0]
            cuts = cut_points(view, self._chunker)
            try:
                for start, end in cuts:
                    pending.append(self._emit(view[start:end]))
                    self._offset += end - start
                    self.bytes += end - start
                    if self._progress is not None:
                        self._progress(end - start)
            finally:
                cuts.close()
                for future in pending:  # they read the map: it stays until they are done
                    future.exception()
                view.release()
        after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise UserError(f'"{f.name}" changed while it was being uploaded; put it again')

    def _feed(self, data: bytes) -> None:
        self._offset += len(data)
        self.bytes += len(data)
        for chunk in self._chunker.feed(data):
            self._emit(chunk)
        if self._progress is not None:
            self._progress(len(data))

    def _emit(self, chunk: bytes | memoryview) -> Future[str]:
        index = len(self._chunks)
        start, end = self._chunk_start, self._chunk_start + len(chunk)
        self._chunk_start = end
        self._slots.acquire()  # bounds the chunks waiting in memory
        future = self._pool.submit(self._store_chunk, chunk)
        future.add_done_callback(lambda _: self._slots.release())
        self._chunks.append(future)
        still_open = []
        for f in self._open:
            lo, hi = max(f.start, start), min(f.end if f.end >= 0 else end, end)
            if hi > lo:
                f.ranges.append((index, lo - start, hi - lo))
            if f.end >= 0 and f.end <= end:
                self._entries.append((f, f.end - f.start))
            else:
                still_open.append(f)
        self._open = still_open
        return future

    def _store_chunk(self, chunk: bytes | memoryview) -> str:
        if isinstance(chunk, memoryview):
            # A view of a memory-mapped file: copy it once, so the bytes hashed are the bytes
            # written even if the file changes meanwhile, and release the view here (the pool
            # keeps its arguments alive a moment after the future is done; the map must close).
            with chunk:
                data = bytes(chunk)
        else:
            data = chunk
        key = content_key(CHUNKS, data)
        self._store.put(key, data)
        return key

    def finish(self) -> Uploaded:
        """Store what is left, wait for every chunk, then store the layer describing the files."""
        try:
            for chunk in self._chunker.finish():
                self._emit(chunk)
            keys = [f.result() for f in self._chunks]  # raises the first storage failure
        finally:
            self._pool.shutdown(wait=True)
        entries = [
            Entry(
                f.path,
                f.op,
                size,
                tuple(ChunkRange(keys[i], off, length) for i, off, length in f.ranges),
                f.hash if isinstance(f.hash, str) else f.hash.result(),
            )
            for f, size in self._entries
        ]
        layer = layers.build(entries)
        return Uploaded(layers.write(self._store, layer), len(entries), self.bytes)

    def abort(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _hash_whole(view: memoryview) -> str:
    return str(blake3.blake3(view, max_threads=blake3.blake3.AUTO).hexdigest())


def write_layer(store: BlobStore, entries: list[Entry]) -> Uploaded:
    """Store a layer of entries that need no new bytes (copies, deletes)."""
    layer: Layer = layers.build(entries)
    return Uploaded(layers.write(store, layer), len(entries), 0)
