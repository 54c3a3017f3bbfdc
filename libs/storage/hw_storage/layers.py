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
import re
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
    hash: str = ""  # BLAKE3 of the file's bytes ("" when unknown): what "the same content" means


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


_CHUNK_KEY = re.compile(r"^chunks/[0-9a-f]{64}$")
_HASH = re.compile(r"^([0-9a-f]{64})?$")


def validate(layer: Layer) -> None:
    """Refuse a layer a client wrote wrongly: every path normalised, known operations, chunk keys of
    the right form, and sizes that are the sum of the ranges."""
    for entry in layer.entries:
        where = f'layer entry "{entry.path}"'
        if paths.normalize(entry.path) != entry.path:
            raise UserError(f"{where}: the path is not normalised")
        if entry.op not in _OP_NAMES:
            raise UserError(f"{where}: unknown operation {entry.op}")
        if entry.op == DELETE and (entry.chunks or entry.size):
            raise UserError(f"{where}: a delete carries no content")
        if any(not _CHUNK_KEY.match(c.chunk) or c.offset < 0 or c.length < 0 for c in entry.chunks):
            raise UserError(f"{where}: a chunk range is malformed")
        if entry.op != DELETE and entry.size != sum(c.length for c in entry.chunks):
            raise UserError(f"{where}: size {entry.size} is not the sum of its ranges")
        if not _HASH.match(entry.hash):
            raise UserError(f"{where}: the content hash is malformed")
    build(layer.entries)  # one entry per path, no delete overlapping a write


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
