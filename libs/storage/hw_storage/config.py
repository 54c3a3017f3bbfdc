"""Which object store a Headwater instance uses, from the environment.

    HW_STORAGE          local (default) or s3
    HW_STORAGE_PATH     local: where blobs go (default $HW_HOME/data)
    HW_S3_ENDPOINT      s3: host:port
    HW_S3_BUCKET        s3: bucket (default headwater; created if missing)
    HW_S3_PREFIX        s3: key prefix inside the bucket (default none)
    HW_S3_ACCESS_KEY, HW_S3_SECRET_KEY, HW_S3_SECURE (1 for https), HW_S3_REGION

`hwctl up` passes its environment to the services, and `hwctl` reads the same variables, so the
CLI and the services always agree on where bytes are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from hw_events.errors import UserError

TYPE_CHECKING = False  # `hwctl` takes home_dir from here on its fast path: no blake3, no minio
if TYPE_CHECKING:
    from hw_storage.blobs import BlobStore


def home_dir(env: Mapping[str, str]) -> str:
    """`$HW_HOME`, or `~/.headwater`: where a local Headwater keeps everything."""
    return os.path.abspath(os.path.expanduser(env.get("HW_HOME") or "~/.headwater"))


def open_store(env: Mapping[str, str] | None = None) -> BlobStore:
    env = os.environ if env is None else env
    kind = env.get("HW_STORAGE", "local").lower()
    if kind == "local":
        from hw_storage.local import LocalBlobStore

        return LocalBlobStore(env.get("HW_STORAGE_PATH") or os.path.join(home_dir(env), "data"))
    if kind == "s3":
        missing = [v for v in ("HW_S3_ENDPOINT", "HW_S3_ACCESS_KEY", "HW_S3_SECRET_KEY") if not env.get(v)]
        if missing:
            raise UserError(f"HW_STORAGE=s3 needs {', '.join(missing)}")
        from hw_storage.s3 import S3BlobStore

        return S3BlobStore(
            env["HW_S3_ENDPOINT"],
            env.get("HW_S3_BUCKET", "headwater"),
            access_key=env["HW_S3_ACCESS_KEY"],
            secret_key=env["HW_S3_SECRET_KEY"],
            secure=env.get("HW_S3_SECURE", "0") in ("1", "true", "yes"),
            region=env.get("HW_S3_REGION") or None,
            prefix=env.get("HW_S3_PREFIX", ""),
        )
    raise UserError(f'unknown HW_STORAGE "{kind}": use "local" or "s3"')
