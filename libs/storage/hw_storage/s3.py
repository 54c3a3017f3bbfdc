"""Blobs in any S3 API (MinIO, SeaweedFS, AWS) through the `minio` client.

Chunks are a few MiB: each goes up in one PUT (no multipart), and a HEAD first skips what the
bucket already holds, so the same bytes are uploaded once.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from minio import Minio
from minio.error import S3Error

from hw_storage.blobs import BlobNotFound

_MIN_PART = 5 * 1024 * 1024  # below this minio would refuse a part size


class S3BlobStore:
    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        prefix: str = "",
    ) -> None:
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.description = f"s3://{bucket}/{self.prefix} at {endpoint}"
        if not self.client.bucket_exists(bucket):
            try:
                self.client.make_bucket(bucket)
            except S3Error as err:
                if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def _name(self, key: str) -> str:
        return self.prefix + key

    def put(self, key: str, data: bytes | memoryview) -> bool:
        if self.exists(key):
            return False
        size = len(data)
        self.client.put_object(
            self.bucket, self._name(key), io.BytesIO(data), size, part_size=max(_MIN_PART, size)
        )
        return True

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, self._name(key))
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise
        return True

    def _read(self, key: str, **range_: Any) -> bytes:
        try:
            response = self.client.get_object(self.bucket, self._name(key), **range_)
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise BlobNotFound(key) from None
            raise
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def get(self, key: str) -> bytes:
        return self._read(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        return self._read(key, offset=offset, length=length)

    def keys(self, prefix: str) -> Iterator[str]:
        for obj in self.client.list_objects(self.bucket, prefix=self._name(prefix), recursive=True):
            yield obj.object_name[len(self.prefix) :]
