"""Snapshots of projections, so a restart replays only the tail of the log.

A snapshot is stored in the `hw_snapshots` KV bucket under `<stream>.<projection>`. A state too big
for one NATS message goes into the `hw_snapshot_blobs` object store (chunked), and the KV entry
points at it. A big snapshot is stored zlib-compressed. A snapshot is only a cache: when it is
missing, unreadable, of another schema, or ahead of the stream, the projection replays from the
start and nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import zlib
from datetime import datetime
from typing import Any

import msgspec
from nats.js import api
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from hw_events import subjects
from hw_events.messages import Version

_OBJECT_REF = b"@object:"
_ZLIB = b"@zlib:"  # (a msgpack snapshot starts with a map byte, never "@")
COMPRESS_FROM = 64 * 1024  # bytes: a bigger snapshot is stored compressed (zlib, fastest level)
_HEADROOM = 4096  # bytes of a NATS message left for headers and subject


class Snapshot(msgspec.Struct, kw_only=True):
    projection: str
    schema: str
    stream: str
    events: list[str] = msgspec.field(default_factory=list)  # event tags the state was built from
    seq: int
    taken: datetime
    positions: dict[str, Version]
    commands: list[str]
    state: msgspec.Raw


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode(snapshot: Snapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode(data: bytes) -> Snapshot:
    return _decoder.decode(data)


class SnapshotStore:
    """Saves and loads snapshot bytes by key; opens its buckets on first use."""

    def __init__(
        self, js: Any, *, bucket: str = subjects.SNAPSHOT_BUCKET, objects: str = subjects.SNAPSHOT_OBJECTS
    ):
        self._js = js
        self.bucket = bucket
        self.objects = objects
        self._kv: Any = None
        self._obs: Any = None
        self.max_inline = 1024 * 1024 - _HEADROOM

    async def _bucket(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self.bucket)
            except BucketNotFoundError:
                self._kv = await self._js.create_key_value(bucket=self.bucket, history=1)
            max_payload = getattr(self._js._nc, "max_payload", 0)
            if max_payload:
                self.max_inline = min(self.max_inline, max_payload - _HEADROOM)
        return self._kv

    async def _objects(self) -> Any:
        if self._obs is None:
            try:
                self._obs = await self._js.object_store(self.objects)
            except (BucketNotFoundError, NotFoundError):
                self._obs = await self._js.create_object_store(self.objects)
        return self._obs

    async def save(self, key: str, data: bytes) -> None:
        if len(data) >= COMPRESS_FROM:
            # A big state compresses ~3x at ~150 MB/s; a restart reads it at 30-45 MB/s.
            data = _ZLIB + await asyncio.to_thread(zlib.compress, data, 1)
        kv = await self._bucket()
        if len(data) <= self.max_inline:
            await kv.put(key, data)
            return
        obs = await self._objects()
        await obs.put(key, data)
        await kv.put(key, _OBJECT_REF + key.encode())

    async def load(self, key: str) -> bytes | None:
        data = await self._load_stored(key)
        if data is not None and data.startswith(_ZLIB):
            return await asyncio.to_thread(zlib.decompress, memoryview(data)[len(_ZLIB) :])
        return data

    async def _load_stored(self, key: str) -> bytes | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(key)
        except NotFoundError:  # never saved, or deleted
            return None
        data: bytes = entry.value or b""
        if data.startswith(_OBJECT_REF):
            try:
                return await self._read_object(data[len(_OBJECT_REF) :].decode())
            except ObjectNotFoundError:
                return None
        return data

    async def _read_object(self, name: str) -> bytes:
        """An object's bytes, its chunks fetched in batches by a pull consumer: nats-py's
        `ObjectStore.get` reads them through an ordered push consumer at ~19 MB/s (a restart's
        snapshot load was most of its time); fetched, 15 MB take ~0.05 s."""
        obs = await self._objects()
        info = await obs.get_info(name)  # ObjectNotFoundError when missing
        if not info.size:
            return b""
        sub = await self._js.pull_subscribe(
            f"$O.{self.objects}.C.{info.nuid}",
            stream=f"OBJ_{self.objects}",
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0),
        )
        chunks: list[bytes] = []
        read = 0
        try:
            while read < info.size:
                for msg in await sub.fetch(batch=256, timeout=5):
                    chunks.append(msg.data)
                    read += len(msg.data)
        finally:
            await sub.unsubscribe()
        data = b"".join(chunks)
        expected = base64.urlsafe_b64decode(info.digest.split("=", 1)[1])  # "SHA-256=<base64>"
        if read != info.size or hashlib.sha256(data).digest() != expected:
            raise ValueError(f"snapshot object {name} is damaged (size or digest differs)")
        return data
