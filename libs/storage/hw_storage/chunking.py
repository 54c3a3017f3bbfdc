"""Cutting a byte stream into content-defined chunks (FastCDC), a buffer's worth at a time.

Boundaries depend on content only, so the same bytes give the same chunks wherever they start
after a boundary, and are stored once. At most about two maximum-size chunks sit in memory,
however long the stream: a 5 GB file streams through.
"""

from __future__ import annotations

import logging
from collections.abc import Generator

try:
    from fastcdc.fastcdc_cy import fastcdc_cy as _fastcdc
except ImportError:  # pragma: no cover - the wheels ship the compiled version
    from fastcdc.fastcdc_py import fastcdc_py as _fastcdc

    logging.getLogger(__name__).warning("fastcdc's compiled chunker is missing: chunking runs slowly")

MIN_SIZE = 1 << 20  # 1 MiB
AVG_SIZE = 4 << 20  # 4 MiB: a few milliseconds per S3 request are small against this
MAX_SIZE = 8 << 20  # 8 MiB


def cut_points(data: memoryview, like: Chunker) -> Generator[tuple[int, int], None, None]:
    """(start, end) of each chunk of a whole buffer (a memory-mapped file), cut as `like` cuts.

    Close the generator when done with it early: it holds a view of `data`."""
    chunks = _fastcdc(data, like.min_size, like.avg_size, like.max_size)
    try:
        for c in chunks:
            yield c.offset, c.offset + c.length
    finally:
        chunks.close()


class Chunker:
    """Feed bytes in; get complete chunks out. `finish()` returns the rest."""

    def __init__(
        self, *, min_size: int = MIN_SIZE, avg_size: int = AVG_SIZE, max_size: int = MAX_SIZE
    ) -> None:
        self.min_size, self.avg_size, self.max_size = min_size, avg_size, max_size
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._buf += data
        if len(self._buf) < 2 * self.max_size:
            return []  # cut in batches: one pass of the chunker over many small feeds
        return self._cut(final=False)

    def finish(self) -> list[bytes]:
        return self._cut(final=True) if self._buf else []

    def _cut(self, *, final: bool) -> list[bytes]:
        view = memoryview(self._buf)
        size = len(view)
        out: list[bytes] = []
        done = 0
        chunks = _fastcdc(view, self.min_size, self.avg_size, self.max_size)
        try:
            for chunk in chunks:
                # A cut is final once `max_size` bytes past the chunk's start are known.
                if not final and chunk.offset + self.max_size >= size:
                    break
                end = chunk.offset + chunk.length
                out.append(bytes(view[chunk.offset : end]))
                done = end
        finally:
            chunks.close()  # it holds a view of the buffer, which must go before the buffer shrinks
            del chunks
            view.release()
        del self._buf[:done]
        return out
