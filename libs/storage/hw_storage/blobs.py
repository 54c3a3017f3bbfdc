"""The object store behind Headwater: immutable, content-addressed blobs under `<kind>/<hash>` keys.

Kinds: `chunks/` (file contents, cut by content), `layers/` (file indexes), and the pipeline
system's `plans/` and `indexes/` (datum lists). A key names
its content, so writing a key that exists is a no-op and every reader of a key sees the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import blake3

CHUNKS = "chunks"
LAYERS = "layers"
PLANS = "plans"  # a job's datums: which inputs each reads, and which are skipped
INDEXES = "indexes"  # a finished job's datums: hash, state and output layer each
RESULTS = "results"  # an ended job's datum results, as the workers reported them


class BlobNotFound(KeyError):
    """A key the store does not hold (data lost, or a wrong reference)."""


class BlobDamaged(ValueError):
    """A blob is there but does not hold what was stored (truncated, overwritten)."""


class BlobStore(Protocol):
    """Where chunks and layers live. Implementations: local disk, S3. Thread-safe."""

    description: str  # where it is, for messages: "local disk /path" or "s3://bucket at host"

    def put(self, key: str, data: bytes | memoryview) -> bool:
        """Store `data` under `key` unless it is there already; True if it was written."""
        ...

    def exists(self, key: str) -> bool: ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix` (for audits and garbage collection; never on a hot path)."""
        ...


def content_key(kind: str, data: bytes | memoryview) -> str:
    """The key content is stored under: its kind and its BLAKE3 hash."""
    return f"{kind}/{blake3.blake3(data).hexdigest()}"
