"""The pure parts of file storage: chunking, paths and globs, merging layers into a tree."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_events.errors import UserError
from hw_storage import layers, paths
from hw_storage.chunking import Chunker
from hw_storage.layers import APPEND, DELETE, PUT, ChunkRange, Entry
from hw_storage.tree import Node, TreeView


def small_chunker() -> Chunker:
    return Chunker(min_size=64, avg_size=256, max_size=1024)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=20_000), cuts=st.lists(st.integers(1, 3000), max_size=30))
def test_chunks_depend_on_content_not_on_how_it_was_fed(data: bytes, cuts: list[int]) -> None:
    whole = small_chunker()
    at_once = whole.feed(data) + whole.finish()
    pieces, start = small_chunker(), 0
    fed: list[bytes] = []
    for size in cuts:
        fed += pieces.feed(data[start : start + size])
        start += size
    fed += pieces.feed(data[start:]) + pieces.finish()
    assert fed == at_once
    assert b"".join(fed) == data
    assert all(len(c) <= 1024 for c in fed)


def test_the_same_bytes_after_another_prefix_are_mostly_the_same_chunks() -> None:
    rng = random.Random(7)
    body = rng.randbytes(50_000)
    a, b = small_chunker(), small_chunker()
    chunks_a = a.feed(body) + a.finish()
    chunks_b = b.feed(rng.randbytes(3000) + body) + b.finish()
    shared = set(chunks_a) & set(chunks_b)
    assert len(shared) >= 0.9 * len(chunks_a)  # boundaries realign after the first few


@pytest.mark.parametrize(
    ("given_path", "normal"),
    [("a", "/a"), ("/a/b/", "/a/b"), ("", "/"), ("/", "/"), ("dir/file.txt", "/dir/file.txt")],
)
def test_paths_are_normalised(given_path: str, normal: str) -> None:
    assert paths.normalize(given_path) == normal


@pytest.mark.parametrize("bad", ["../etc/passwd", "/a/../b", "a//b", "./a", "a/\x00b"])
def test_bad_paths_are_refused_naming_them(bad: str) -> None:
    with pytest.raises(UserError, match="invalid path"):
        paths.normalize(bad)


def files(*names: str, size: int = 1) -> list[Entry]:
    return [Entry(paths.normalize(n), PUT, size, (ChunkRange("chunks/x", 0, size),)) for n in names]


def test_glob_counts_match_the_reference_system() -> None:
    """Pachyderm's TestGlobFile tree: 100 files at the root, in dir1/, and in dir2/dir3/."""
    names = [f"file{i}" for i in range(100)]
    tree = TreeView.of(
        [layers.build(files(*names, *(f"dir1/{n}" for n in names), *(f"dir2/dir3/{n}" for n in names)))]
    )
    assert len(tree.glob("*")) == 102
    assert len(tree.glob("*/*")) == 101
    assert len(tree.glob("dir2/dir3/*")) == 100
    assert len(tree.glob("**file1?")) == 30
    assert [n.path for n in tree.glob("/dir?")] == ["/dir1", "/dir2"]
    with pytest.raises(UserError, match="never closed"):
        tree.glob("file[1")


def test_put_append_delete_and_sizes() -> None:
    tree = TreeView.of([layers.build(files("a/x", "a/y", "b", size=10))])
    assert (tree.size_bytes, tree.count) == (30, 3)
    tree.apply(layers.build([Entry("/a/x", APPEND, 5, (ChunkRange("chunks/z", 0, 5),)), Entry("/b", PUT, 1)]))
    assert tree.files["/a/x"].size == 15
    assert [c.chunk for c in tree.files["/a/x"].chunks] == ["chunks/x", "chunks/z"]
    assert tree.node("/a") == Node("/a", "dir", 25)
    assert tree.size_bytes == 26
    tree.apply(layers.build([Entry("/a", DELETE)]))
    assert sorted(tree.files) == ["/b"]
    assert tree.node("/a") is None
    assert tree.size_bytes == 1


def test_a_path_is_never_both_a_file_and_a_directory() -> None:
    tree = TreeView.of([layers.build(files("a/x"))])
    with pytest.raises(UserError, match='cannot write file "/a": it is a directory'):
        tree.apply(layers.build(files("a")))
    with pytest.raises(UserError, match=re.escape('cannot write file "/a/x/y": "/a/x" is a file')):
        tree.apply(layers.build(files("a/x/y")))


def test_one_request_may_not_change_a_path_twice_nor_delete_around_a_write() -> None:
    with pytest.raises(UserError, match="changed twice"):
        layers.build(files("a", "a"))
    with pytest.raises(UserError, match="and delete"):
        layers.build([*files("d/x"), Entry("/d", DELETE)])


def test_listing_a_directory_shows_direct_children() -> None:
    tree = TreeView.of([layers.build(files("top", "dir/a", "dir/sub/b", "dir/sub/c", size=4))])
    assert tree.children("/") == [Node("/dir", "dir", 12), Node("/top", "file", 4)]
    assert tree.children("/dir") == [Node("/dir/a", "file", 4), Node("/dir/sub", "dir", 8)]


def test_diff_lists_changed_files_with_their_directories() -> None:
    """Pachyderm's TestDiffFile: changing /dir/fizz shows /, /dir/, /dir/fizz on both sides."""
    old = TreeView.of([layers.build(files("dir/fizz", "dir/buzz", "other"))])
    new = old.copy()
    new.apply(layers.build([Entry("/dir/fizz", PUT, 2, (ChunkRange("chunks/new", 0, 2),))]))
    added, removed = new.changes_since(old)
    assert [n.path for n in added] == ["/", "/dir", "/dir/fizz"]
    assert [n.path for n in removed] == ["/", "/dir", "/dir/fizz"]
    first = TreeView()
    only_new, nothing = TreeView.of([layers.build(files("foo"))]).changes_since(first)
    assert [n.path for n in only_new] == ["/", "/foo"]
    assert [n.path for n in nothing] == ["/"]


def test_compaction_keeps_the_same_files() -> None:
    tree = TreeView.of([layers.build(files("a", "b/c")), layers.build([Entry("/a", DELETE)])])
    assert TreeView.of([tree.as_layer()]).files == tree.files
    assert layers.decode(layers.encode(tree.as_layer())) == tree.as_layer()


def test_the_same_bytes_in_other_chunks_are_no_change() -> None:
    """Put again in another batch, a file's chunks differ but its content does not."""
    one = Entry("/f", PUT, 4, (ChunkRange("chunks/a", 0, 4),), "1" * 64)
    other = Entry("/f", PUT, 4, (ChunkRange("chunks/b", 10, 4),), "1" * 64)
    old, new = TreeView.of([layers.build([one])]), TreeView.of([layers.build([other])])
    assert new.changes_since(old) == ([], [])
    changed = TreeView.of([layers.build([Entry("/f", PUT, 4, (ChunkRange("chunks/b", 0, 4),), "2" * 64)])])
    assert [n.path for n in changed.changes_since(old)[0]] == ["/", "/f"]


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ("**/*.csv", ["/a.csv", "/d/b.csv", "/d/e/c.csv"]),
        ("/d[/]b.csv", []),
        ("/d[!x]b.csv", []),  # a class never matches the separator
        ("/d/[!x].csv", ["/d/b.csv"]),
        ("/d/[a-c].csv", ["/d/b.csv"]),
    ],
)
def test_glob_edge_cases(pattern: str, matches: list[str]) -> None:
    tree = TreeView.of([layers.build(files("a.csv", "d/b.csv", "d/e/c.csv"))])
    assert [n.path for n in tree.glob(pattern) if n.type == "file"] == matches


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Entry("relative", PUT), "not normalised"),
        (Entry("/a/../b", PUT), "invalid path"),
        (Entry("/a", 9), "unknown operation"),
        (Entry("/a", PUT, 5, (ChunkRange("chunks/x", 0, 5),)), "chunk range is malformed"),
        (Entry("/a", PUT, 6, (ChunkRange("chunks/" + "a" * 64, 0, 5),)), "size 6 is not the sum"),
        (Entry("/a", DELETE, 3), "a delete carries no content"),
        (Entry("/a", PUT, 0, (), "zz"), "hash is malformed"),
    ],
)
def test_a_layer_written_wrongly_is_refused(entry: Entry, message: str) -> None:
    with pytest.raises(UserError, match=message):
        layers.validate(layers.Layer(entries=(entry,)))


@pytest.mark.parametrize("key", ["chunks/../../etc/passwd", "secrets/" + "a" * 64, "chunks/ABC", "layers/"])
def test_local_blob_keys_cannot_leave_the_root(key: str, tmp_path: Path) -> None:
    from hw_storage.local import LocalBlobStore

    with pytest.raises(ValueError, match="invalid blob key"):
        LocalBlobStore(str(tmp_path)).path(key)


def test_a_large_file_that_changes_while_uploading_is_refused(tmp_path: Path) -> None:
    from hw_storage.local import LocalBlobStore
    from hw_storage.upload import Upload

    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    changed = False

    def meddle(_: int) -> None:  # called from inside the upload's loop over the file
        nonlocal changed
        if not changed:
            changed = True
            with open(big, "ab") as f:
                f.write(b"more")

    upload = Upload(LocalBlobStore(str(tmp_path / "blobs")), chunker=small_chunker_mib(), progress=meddle)
    with pytest.raises(UserError, match="changed while it was being uploaded"):
        upload.add_file("/big", str(big))
    upload.abort()


def small_chunker_mib() -> Chunker:
    return Chunker(min_size=64 * 1024, avg_size=256 * 1024, max_size=512 * 1024)
