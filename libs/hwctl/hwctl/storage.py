"""The object store of the running Headwater, as `hwctl up` recorded it (credentials from the
environment): so `hwctl put file` writes where the services read."""

from __future__ import annotations

import os

from hw_storage.blobs import BlobStore
from hw_storage.config import open_store
from hwctl.home import Home


def open_storage(home: Home | None = None) -> BlobStore:
    home = home or Home()
    env = dict(os.environ)
    runtime = home.load()
    if runtime is not None and runtime.storage:
        env.update(runtime.storage)
    env.setdefault("HW_HOME", home.path)
    return open_store(env)
