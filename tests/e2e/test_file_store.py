"""The file store as a user drives it with hwctl, on each storage backend (local disk and S3)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from hwctl.home import Home
from tests.e2e.cli import HWCTL, error_of, hwctl, hwctl_bytes, json_lines, stored_events
from tests.infra import S3Endpoint


@pytest.fixture(params=["local", "s3"])
def headwater(
    request: pytest.FixtureRequest, hw_home: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> str:
    """`hwctl up` with file contents on local disk, or in S3 (weed) under a prefix of this test's own."""
    if request.param == "s3":
        s3: S3Endpoint = request.getfixturevalue("s3")
        for key, value in {
            "HW_STORAGE": "s3",
            "HW_S3_ENDPOINT": s3.endpoint,
            "HW_S3_ACCESS_KEY": s3.access_key,
            "HW_S3_SECRET_KEY": s3.secret_key,
            "HW_S3_BUCKET": "hw-tests",
            "HW_S3_PREFIX": f"e2e-{unique}",
        }.items():
            monkeypatch.setenv(key, value)
    hwctl("up")
    return str(request.param)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def branch_heads(repo: str) -> dict[str, str]:
    return {b["name"]: b["head"] for b in json_lines("list", "branch", repo)}


def test_deferred_processing_journey(headwater: str, tmp_path: Path) -> None:
    """The seeds' walkthrough at the file-store level: stage data, then move master by hand."""
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@master")
    [root] = json_lines("list", "commit", "data")
    assert (root["branch"], root["origin"], root["size_bytes"], root["parent"]) == ("master", "AUTO", 0, None)
    assert root["finished"] is not None

    one = write(tmp_path / "one", os.urandom(3000))
    hwctl("put", "file", "data@staging:/file1", "-f", str(one))  # creates the branch
    heads = branch_heads("data")
    assert list(heads) == ["staging", "master"]  # newest first
    assert heads["master"] == root["id"]
    staged = json_lines("inspect", "commit", "data@staging")[0]
    assert (staged["origin"], staged["parent"], staged["size_bytes"]) == ("USER", None, 3000)

    hwctl("create", "branch", "data@master", "--head", "staging")
    heads = branch_heads("data")
    assert heads["master"] == heads["staging"]
    assert len(json_lines("list", "commit", "data")) == 2  # no copy, no new commit

    hwctl("put", "file", "data@staging:/file2", "-f", str(write(tmp_path / "two", b"second\n")))
    hwctl("put", "file", "data@staging:/file3", "-f", str(write(tmp_path / "three", b"third\n")))
    staging = json_lines("list", "commit", "data@staging")
    assert [c["size_bytes"] for c in staging] == [3013, 3007, 3000]  # sizes are totals, not deltas
    assert json_lines("inspect", "commit", "data@staging^1")[0]["id"] == staging[1]["id"]
    assert json_lines("inspect", "commit", "data@staging.1")[0]["id"] == staging[2]["id"]

    hwctl("create", "branch", "data@master", "--head", "staging^1")  # rewind master to the 2nd commit
    assert branch_heads("data")["master"] == staging[1]["id"]
    assert [f["path"] for f in json_lines("list", "file", "data@master")] == ["/file1", "/file2"]

    commit_id = hwctl("start", "commit", "data@master", "-m", "organise").stdout.strip()
    hwctl("copy", "file", "data@staging:/file3", "data@master:/file3")
    hwctl("delete", "file", "data@master:/file1")
    hwctl("put", "file", "data@master:/extra/notes.txt", "-f", "-", stdin=b"from stdin")
    assert json_lines("inspect", "commit", "data@master")[0]["finished"] is None
    hwctl("finish", "commit", "data@master")

    done = json_lines("inspect", "commit", f"data@{commit_id}")[0]
    assert (done["description"], done["parent"], done["size_bytes"]) == (
        "organise",
        staging[1]["id"],
        7 + 6 + 10,
    )
    assert [(f["path"], f["type"]) for f in json_lines("list", "file", "data@master")] == [
        ("/extra", "dir"),
        ("/file2", "file"),
        ("/file3", "file"),
    ]
    assert hwctl_bytes("get", "file", "data@master:/file3") == b"third\n"
    assert hwctl_bytes("get", "file", "data@master:/extra/notes.txt") == b"from stdin"
    assert hwctl_bytes("get", "file", "data@staging^2:/file1") == one.read_bytes()
    diff = json_lines("diff", "file", "data@master")
    assert {(d["side"], d["path"]) for d in diff} >= {
        ("new", "/file3"),
        ("new", "/extra/notes.txt"),
        ("old", "/file1"),
    }


def test_directories_stdin_append_glob_and_large_files(headwater: str, tmp_path: Path) -> None:
    hwctl("create", "repo", "images")
    tree = tmp_path / "local"
    for i in range(30):
        (tree / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        write(tree / f"d{i % 3}" / f"img{i:02}.png", os.urandom(100 + i))
    hwctl("put", "file", "-r", "images@master:/raw", "-f", str(tree))
    assert len(json_lines("glob", "file", "images@master:/raw/*/*.png")) == 30
    assert [n["path"] for n in json_lines("glob", "file", "images@master:/raw/d?")] == [
        "/raw/d0",
        "/raw/d1",
        "/raw/d2",
    ]
    assert json_lines("inspect", "file", "images@master:/raw/d1")[0]["type"] == "dir"

    big = write(tmp_path / "big.bin", os.urandom(20 * 1024 * 1024 + 5))
    hwctl("put", "file", "images@master:/big.bin", "-f", str(big))
    out = tmp_path / "back.bin"
    hwctl("get", "file", "images@master:/big.bin", "-o", str(out))
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()

    hwctl("put", "file", "images@master:/log", "-f", "-", stdin=b"one\n")
    hwctl("put", "file", "-a", "images@master:/log", "-f", "-", stdin=b"two\n")
    assert hwctl_bytes("get", "file", "images@master:/log") == b"one\ntwo\n"
    hwctl("put", "file", "images@master:/log", "-f", "-", stdin=b"over\n")  # overwrite is the default
    assert hwctl_bytes("get", "file", "images@master:/log") == b"over\n"

    hwctl("copy", "file", "images@master:/raw", "images@backup:/copy")
    assert len(json_lines("glob", "file", "images@backup:/copy/**.png")) == 30
    assert (
        json_lines("inspect", "repo", "images")[0]["size_bytes"]
        == json_lines("inspect", "commit", "images@master")[0]["size_bytes"]
    )


@pytest.mark.parametrize("headwater", ["local"], indirect=True)
def test_errors_name_the_problem_and_lose_nothing(headwater: str, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    hwctl("put", "file", "data@master:/keep", "-f", "-", stdin=b"precious")
    before = json_lines("list", "commit", "data")
    cases = [
        (["inspect", "repo", "images"], 'repo "images" not found'),
        (["list", "commit", "data@staging"], 'branch "staging" not found in repo "data"'),
        (["inspect", "commit", "data@master^9"], 'invalid ancestry "master^9": only 1 commits'),
        (["put", "file", "data@master:../etc/passwd", "-f", "-"], 'invalid path "../etc/passwd"'),
        (["put", "file", "data@master:/x", "-f", str(tmp_path / "missing")], "no such file or directory"),
        (["put", "file", "data@master:/d", "-f", str(tmp_path)], "is a directory: use -r"),
        (
            ["put", "file", f"data@{before[0]['id']}:/x", "-f", "-"],
            f"commit {before[0]['id']} is finished; start a new commit",
        ),
        (["put", "file", "data@master:/keep/inner", "-f", "-"], '"/keep" is a file'),
        (["get", "file", "data@master:/nope"], 'file "/nope" not found in data@master'),
        (["delete", "file", "data@master:/nope"], 'file "/nope" not found'),
        (
            ["create", "branch", "data@x", "--head", "other@master"],
            "branch and head commit must belong to the same repo",
        ),
        (["finish", "commit", "data@master"], "is already finished"),
        (["glob", "file", "data@master:["], "is never closed"),
    ]
    for args, message in cases:
        code, err = error_of(*args)
        assert code == 1, (args, err)
        assert message in err, (args, err)
    assert json_lines("list", "commit", "data") == before
    assert hwctl_bytes("get", "file", "data@master:/keep") == b"precious"


@pytest.mark.parametrize("headwater", ["local"], indirect=True)
def test_two_clients_writing_one_branch_lose_nothing(headwater: str) -> None:
    hwctl("create", "repo", "busy")
    hwctl("create", "branch", "busy@master")
    failures: list[str] = []

    def writer(name: str) -> None:
        for i in range(8):
            result = hwctl(
                "put", "file", f"busy@master:/{name}/{i}", "-f", "-", stdin=f"{name}{i}".encode(), check=False
            )
            if result.returncode:
                failures.append(result.stderr)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(json_lines("list", "commit", "busy@master")) == 1 + 16  # every write is a commit in the chain
    assert len(json_lines("glob", "file", "busy@master:/*/*")) == 16


@pytest.mark.parametrize("headwater", ["local"], indirect=True)
def test_fs_killed_mid_upload_and_with_an_open_commit(headwater: str, hw_home: Path, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    commit_id = hwctl("start", "commit", "data@master").stdout.strip()
    hwctl("put", "file", "data@master:/before", "-f", "-", stdin=b"kept")
    data = os.urandom(48 * 1024 * 1024)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)  # the upload cannot finish before the test says so

    upload = subprocess.Popen(
        [HWCTL, "put", "file", "data@master:/big.bin", "-f", str(pipe)], stderr=subprocess.PIPE
    )
    with open(pipe, "wb") as feed:
        feed.write(data[: len(data) // 2])  # half of it is read, cut and stored...
        runtime: Any = Home(str(hw_home)).load()
        os.kill(runtime.services["fs"], signal.SIGKILL)  # ...when fs dies
        hwctl("up")  # brings fs back; it replays the log
        feed.write(data[len(data) // 2 :])
    _, err = upload.communicate(timeout=120)
    assert upload.returncode == 0, err  # the client retried recording its layer until fs was back

    assert json_lines("inspect", "commit", "data@master")[0]["id"] == commit_id  # still open, still there
    hwctl("finish", "commit", "data@master")
    assert [f["path"] for f in json_lines("list", "file", f"data@{commit_id}")] == ["/before", "/big.bin"]
    assert hwctl_bytes("get", "file", "data@master:/before") == b"kept"
    assert (
        hashlib.sha256(hwctl_bytes("get", "file", "data@master:/big.bin")).digest()
        == hashlib.sha256(data).digest()
    )


@pytest.mark.parametrize("headwater", ["local"], indirect=True)
def test_wait_urls_provenance_and_small_metadata(headwater: str, hw_home: Path, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "repo", "model")

    # wait commit blocks until the commit is finished
    commit_id = hwctl("start", "commit", "data@master").stdout.strip()
    waiter = subprocess.Popen(
        [HWCTL, "wait", "commit", f"data@{commit_id}", "-o", "json"], stdout=subprocess.PIPE
    )
    assert waiter.poll() is None
    hwctl("finish", "commit", "data@master")
    out, _ = waiter.communicate(timeout=30)
    assert json.loads(out)["finished"] is not None

    # put file from a URL
    served = write(tmp_path / "page.txt", b"served over http")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hwctl("put", "file", "data@master:/", "-f", f"http://127.0.0.1:{server.server_port}/{served.name}")
    finally:
        server.shutdown()
    assert hwctl_bytes("get", "file", "data@master:/page.txt") == b"served over http"

    # a branch that follows another gets an open AUTO commit, with one id, when the other moves
    hwctl("create", "branch", "model@master", "-p", "data@master")
    assert json_lines("inspect", "branch", "model@master")[0]["provenance"] == ["data@master"]
    hwctl("put", "file", "data@master:/more", "-f", "-", stdin=b"x")
    data_head = json_lines("inspect", "commit", "data@master")[0]
    model_head = json_lines("inspect", "commit", "model@master")[0]
    assert model_head["id"] == data_head["id"]  # one commit set
    assert (model_head["origin"], model_head["finished"]) == ("AUTO", None)
    assert error_of("put", "file", "model@master:/x", "-f", "-")[1].endswith("not by hand")
    code, err = error_of("delete", "repo", "data")
    assert code == 1
    assert "is read by model@master" in err

    # a thousand files in one put are one event, not a thousand
    many = tmp_path / "many"
    many.mkdir()
    for i in range(1000):
        write(many / f"{i:04}", b"%d" % i)
    hwctl("put", "file", "-r", "data@bulk:/", "-f", str(many))
    bulk = json_lines("inspect", "commit", "data@bulk")[0]
    runtime: Any = Home(str(hw_home)).load()
    events = stored_events(runtime.nats_url, "hw.fs.evt.data")
    mine = [
        e["event"]["type"]
        for e in events
        if e["event"].get("commit") == bulk["id"] or e["event"].get("head") == bulk["id"]
    ]
    assert sorted(mine) == ["branch_created", "commit_finished", "commit_started", "files_changed"]
    assert bulk["files"] == 1000


@pytest.mark.parametrize("headwater", ["local"], indirect=True)
def test_wait_commit_outlives_a_restart_of_fs(headwater: str, hw_home: Path) -> None:
    hwctl("create", "repo", "data")
    commit_id = hwctl("start", "commit", "data@master").stdout.strip()
    waiter = subprocess.Popen(
        [HWCTL, "wait", "commit", f"data@{commit_id}", "-o", "json"], stdout=subprocess.PIPE
    )
    runtime: Any = Home(str(hw_home)).load()
    os.kill(runtime.services["fs"], signal.SIGKILL)
    hwctl("up")
    assert waiter.poll() is None  # still waiting, across the restart
    hwctl("finish", "commit", "data@master")
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0
    assert json.loads(out)["id"] == commit_id
    code, err = error_of("wait", "commit", "data@nope", "--timeout", "1")
    assert code == 1
    assert 'branch "nope" not found' in err


@pytest.mark.parametrize("headwater", ["local"], indirect=True)
def test_a_damaged_chunk_is_reported_and_leaves_no_partial_file(
    headwater: str, hw_home: Path, tmp_path: Path
) -> None:
    hwctl("create", "repo", "data")
    hwctl("put", "file", "data@master:/f", "-f", "-", stdin=b"x" * 10_000)
    assert (
        hwctl("get", "file", "data@master:/f", "-o", str(tmp_path / "ok")).returncode,
        (tmp_path / "ok").stat().st_size,
    ) == (0, 10_000)
    [stored] = [p for p in (hw_home / "data" / "chunks").rglob("*") if p.is_file()]
    stored.write_bytes(stored.read_bytes()[:100])  # truncated behind Headwater's back
    code, err = error_of("get", "file", "data@master:/f", "-o", str(tmp_path / "out"))
    assert code == 70
    assert "/f in data@master: a chunk is damaged in the object store" in err
    assert not list(tmp_path.glob("out*"))
