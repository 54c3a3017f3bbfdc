"""Blobs on local disk: the embedded default, under `$HW_HOME/data`.

`<root>/<kind>/<h[:2]>/<h>`: two hex digits fan out the files so no directory grows huge. A blob is
written to a temporary name and renamed into place, so a crash never leaves a half-written blob
under its content's name. Nothing is fsynced per blob: like the log (JetStream syncs on an
interval), durability against power loss comes from the file system's own writeback.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

from hw_storage.blobs import CHUNKS, INDEXES, LAYERS, PLANS, RESULTS, BlobNotFound

KINDS = (CHUNKS, LAYERS, PLANS, INDEXES, RESULTS)
_NAME = re.compile(r"^[0-9a-f]{64}$")


class LocalBlobStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.description = f"local disk {self.root}"
        os.makedirs(self.root, exist_ok=True)

    def path(self, key: str) -> str:
        """Where a key lives; only `<kind>/<64 hex>` keys of known kinds, so none leaves the root."""
        kind, _, name = key.partition("/")
        if kind not in KINDS or not _NAME.match(name):
            raise ValueError(f"invalid blob key {key!r}")
        return os.path.join(self.root, kind, name[:2], name)

    def put(self, key: str, data: bytes | memoryview) -> bool:
        final = self.path(key)
        if os.path.exists(final):
            return False
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, final)
        return True

    def exists(self, key: str) -> bool:
        return os.path.exists(self.path(key))

    def get(self, key: str) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def keys(self, prefix: str) -> Iterator[str]:
        kind = prefix.split("/", 1)[0]
        base = os.path.join(self.root, kind)
        if not os.path.isdir(base):
            return
        for fan in sorted(os.listdir(base)):
            for name in sorted(os.listdir(os.path.join(base, fan))):
                if not name.endswith(".tmp") and f"{kind}/{name}".startswith(prefix):
                    yield f"{kind}/{name}"
