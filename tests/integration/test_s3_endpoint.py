"""The S3 endpoint the fixtures provide (weed, or MinIO when Docker answers) behaves like S3.

The object-store adapter of the file store will run its contract suite against this endpoint;
this checks the parts it relies on: buckets, streamed multipart puts, ranged reads, listing."""

from __future__ import annotations

import io
import os
import uuid

from tests.infra import S3Endpoint


def test_objects_round_trip_with_multipart_and_ranges(s3: S3Endpoint) -> None:
    client = s3.client()
    bucket = f"hw-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket)
    small = b"hello headwater"
    big = os.urandom(6 * 1024 * 1024 + 123)  # above the client's 5 MiB multipart threshold
    client.put_object(bucket, "chunks/small", io.BytesIO(small), len(small))
    client.put_object(bucket, "chunks/big", io.BytesIO(big), -1, part_size=5 * 1024 * 1024)

    assert client.get_object(bucket, "chunks/small").read() == small
    assert client.get_object(bucket, "chunks/big", offset=1000, length=4096).read() == big[1000:5096]
    assert client.stat_object(bucket, "chunks/big").size == len(big)
    assert sorted(o.object_name for o in client.list_objects(bucket, prefix="chunks/")) == [
        "chunks/big",
        "chunks/small",
    ]
