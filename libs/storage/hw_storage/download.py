"""Reading a file's bytes back: its chunk ranges, in order, from the object store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from hw_storage.blobs import BlobDamaged, BlobStore
from hw_storage.layers import ChunkRange


def read_ranges(store: BlobStore, ranges: Iterable[ChunkRange], *, threads: int = 4) -> Iterator[bytes]:
    """The file's bytes as a stream of pieces, fetched a few ranges ahead (S3 latency overlaps)."""
    pending = list(ranges)
    if len(pending) <= 1:  # a small file: no threads to start for one read
        for only in pending:
            yield _checked(only, store.get_range(only.chunk, only.offset, only.length))
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hw-download") as pool:
        window = [pool.submit(store.get_range, r.chunk, r.offset, r.length) for r in pending[:threads]]
        next_index = len(window)
        done = 0
        while window:
            data = _checked(pending[done], window.pop(0).result())
            done += 1
            if next_index < len(pending):
                r = pending[next_index]
                window.append(pool.submit(store.get_range, r.chunk, r.offset, r.length))
                next_index += 1
            yield data


def _checked(expected: ChunkRange, data: bytes) -> bytes:
    if len(data) != expected.length:
        raise BlobDamaged(
            f"{expected.chunk} gave {len(data)} bytes where {expected.length} were expected "
            f"at offset {expected.offset}"
        )
    return data
