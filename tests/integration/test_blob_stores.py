"""One contract for every object store backend (local disk, S3), and uploads through it."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from hw_storage import layers
from hw_storage.blobs import CHUNKS, BlobNotFound, content_key
from hw_storage.chunking import Chunker
from hw_storage.download import read_ranges
from hw_storage.tree import TreeView
from hw_storage.upload import Upload


def test_a_blob_round_trips_and_is_written_once(blob_store: Any) -> None:
    data = os.urandom(100_000)
    key = content_key(CHUNKS, data)
    assert not blob_store.exists(key)
    assert blob_store.put(key, data) is True
    assert blob_store.put(key, data) is False  # content-addressed: already there
    assert blob_store.exists(key)
    assert blob_store.get(key) == data
    assert blob_store.get_range(key, 500, 1000) == data[500:1500]
    assert blob_store.get_range(key, 0, 0) == b""
    assert key in list(blob_store.keys(CHUNKS))


def test_a_missing_blob_is_reported_by_key(blob_store: Any) -> None:
    with pytest.raises(BlobNotFound):
        blob_store.get("chunks/" + "0" * 64)
    with pytest.raises(BlobNotFound):
        blob_store.get_range("chunks/" + "0" * 64, 0, 10)


def test_files_upload_in_shared_chunks_and_read_back(blob_store: Any) -> None:
    small = {f"/many/f{i:03}": os.urandom(3000 + i) for i in range(300)}
    big = os.urandom(3 * 1024 * 1024 + 17)
    upload = Upload(blob_store, chunker=Chunker(min_size=64 * 1024, avg_size=256 * 1024, max_size=512 * 1024))
    for path, data in small.items():
        upload.add(path, data)
    upload.add("/big.bin", io.BytesIO(big))
    upload.add("/empty", b"")
    done = upload.finish()
    assert (done.files, done.bytes) == (302, len(big) + sum(map(len, small.values())))

    chunk_count = len(list(blob_store.keys(CHUNKS)))
    assert chunk_count < 40  # 300 small files are packed, not one object each

    tree = TreeView.of([layers.read(blob_store, done.layer)])
    assert tree.count == 302
    for path, data in [*small.items(), ("/big.bin", big), ("/empty", b"")]:
        assert b"".join(read_ranges(blob_store, tree.files[path].chunks)) == data
        assert tree.files[path].size == len(data)


def test_the_same_bytes_uploaded_again_are_stored_once(blob_store: Any) -> None:
    data = os.urandom(5 * 1024 * 1024)
    first = Upload(blob_store)
    first.add("/a", io.BytesIO(data))
    first.finish()
    before = sorted(blob_store.keys(CHUNKS))
    again = Upload(blob_store)
    again.add("/copy-of-a", io.BytesIO(data))
    again.finish()
    assert sorted(blob_store.keys(CHUNKS)) == before


def test_a_large_local_file_is_cut_from_a_map_and_always_gives_the_same_chunks(
    blob_store: Any, tmp_path: Path
) -> None:
    def chunker() -> Chunker:
        return Chunker(min_size=64 * 1024, avg_size=256 * 1024, max_size=512 * 1024)  # "large": >= 1 MiB

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024 + 3))
    alone = Upload(blob_store, chunker=chunker())
    alone.add_file("/big", str(big))
    first = TreeView.of([layers.read(blob_store, alone.finish().layer)])

    batch = Upload(blob_store, chunker=chunker())
    batch.add("/before", os.urandom(100_000))  # small files ahead of it leave bytes in the stream
    batch.add_file("/again/big", str(big))
    batch.add_file("/small", str(_write(tmp_path / "tiny", b"x" * 10)))
    second = TreeView.of([layers.read(blob_store, batch.finish().layer)])

    assert first.files["/big"].chunks == second.files["/again/big"].chunks
    assert b"".join(read_ranges(blob_store, second.files["/again/big"].chunks)) == big.read_bytes()
    assert b"".join(read_ranges(blob_store, second.files["/small"].chunks)) == b"x" * 10


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
