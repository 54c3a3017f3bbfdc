"""Layers: immutable, sorted indexes of file changes, stored content-addressed in the object store.

A commit's files are the merge of a list of layers, oldest first. A layer written by `put file` holds
`put` (or `append`) entries pointing at chunk ranges; one written by `delete file` holds `delete`
entries (a path and everything under it); `copy file` writes `put` entries that point at the
source's chunks (no bytes copied). Compaction merges a commit's layers into one layer of `put`s.

Within a layer, paths are sorted and appear once, and a `delete` never overlaps another entry, so
the order of entries inside a layer never matters. Only metadata: a layer entry is ~100 bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgspec

from hw_events.errors import UserError
from hw_storage import paths
from hw_storage.blobs import LAYERS, BlobStore, content_key

PUT = 0
APPEND = 1
DELETE = 2
_OP_NAMES = {PUT: "put", APPEND: "append", DELETE: "delete"}


class ChunkRange(msgspec.Struct, array_like=True, frozen=True):
    chunk: str  # blob key of the chunk
    offset: int
    length: int


class Entry(msgspec.Struct, array_like=True, frozen=True):
    path: str
    op: int
    size: int = 0
    chunks: tuple[ChunkRange, ...] = ()


class Layer(msgspec.Struct, frozen=True):
    entries: tuple[Entry, ...]
    format: int = 1


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Layer)


def build(entries: Iterable[Entry]) -> Layer:
    """A layer from entries in any order; refuses two entries for one path, or a delete overlapping
    another entry (their order would matter)."""
    ordered = sorted(entries, key=lambda e: e.path)
    deletes = [e.path for e in ordered if e.op == DELETE]
    for before, after in itertools.pairwise(ordered):
        if before.path == after.path:
            raise UserError(f'"{before.path}" is changed twice in one request')
    for deleted in deletes:
        for entry in ordered:
            if entry.path != deleted and (
                paths.under(deleted, entry.path) or paths.under(entry.path, deleted)
            ):
                what = _OP_NAMES[entry.op]
                raise UserError(f'cannot {what} "{entry.path}" and delete "{deleted}" in one request')
    return Layer(entries=tuple(ordered))


def encode(layer: Layer) -> bytes:
    return _encoder.encode(layer)


def decode(data: bytes) -> Layer:
    return _decoder.decode(data)


def write(store: BlobStore, layer: Layer) -> str:
    """Store `layer`; return its key (the same layer twice is one blob)."""
    data = encode(layer)
    key = content_key(LAYERS, data)
    store.put(key, data)
    return key


def read(store: BlobStore, key: str) -> Layer:
    return decode(store.get(key))
