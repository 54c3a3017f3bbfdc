"""Branch triggers as a user drives them with hwctl: deferred processing on size, commits and time.

Whether a trigger did *not* fire is checked against a canary: a branch that follows the same source
on every commit (`--trigger-all` with no condition). The triggers service judges every trigger with
news from one commit in the same pass, so once the canary has moved, the others were judged too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from hw_events.bus import CommandClient
from hw_events.errors import TransientError
from hw_events.fs import SERVICE, CopyFiles
from hwctl.home import Home
from tests.e2e.cli import HWCTL, error_of, hwctl, json_lines, stored_events


@pytest.fixture
def headwater(hw_home: Path) -> Home:
    hwctl("up")
    return Home(str(hw_home))


def heads(repo: str = "data") -> dict[str, str]:
    return {b["name"]: b["head"] for b in json_lines("list", "branch", repo)}


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (heads: {heads()})")
        time.sleep(0.02)


def put(ref: str, data: bytes) -> str:
    """Commit `data` (piped in, as bytes) as a new file on `ref`; the new head."""
    subprocess.run([HWCTL, "put", "file", f"data@{ref}:/f{time.monotonic_ns()}"], input=data, check=True)
    return heads()[ref]


def put_and_settle(data: bytes, source: str = "staging") -> str:
    """Commit on `source`, and wait until its canary has followed (so every trigger was judged)."""
    head = put(source, data)
    eventually(lambda: heads()[f"canary-{source}"] == head, f"canary-{source} follows {source}")
    return head


def canary(source: str = "staging") -> None:
    hwctl("create", "branch", f"data@canary-{source}", "--trigger", source, "--trigger-all")


def trigger_moves(home: Home, branch: str) -> list[dict[str, Any]]:
    runtime: Any = home.load()
    return [
        e
        for e in stored_events(runtime.nats_url, "hw.fs.evt.data")
        if e["event"]["type"] == "branch_head_moved"
        and e["event"]["branch"] == branch
        and e["event"].get("reason") == "trigger"
    ]


def test_the_seeds_journey_moves_master_once_a_megabyte_is_new(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    small = put("master", b"a small existing head\n")
    put("staging", b"a little staged data\n")
    hwctl("create", "branch", "data@master", "--trigger", "staging", "--trigger-size", "1MB")
    canary()
    listing = hwctl("list", "branch", "data").stdout
    assert "staging on Size(1MB)" in listing
    [master] = [b for b in json_lines("list", "branch", "data") if b["name"] == "master"]
    assert master["trigger"] == {"branch": "staging", "size": "1MB", "commits": 0, "cron": "", "all": False}

    put_and_settle(b"still small\n")
    assert heads()["master"] == small  # setting the trigger, and small commits, move nothing

    subprocess.run(
        f"dd if=/dev/urandom bs=1MiB count=1 2>/dev/null | {HWCTL} put file data@staging:/file",
        shell=True,
        check=True,
    )
    eventually(lambda: heads()["master"] == heads()["staging"], "master moves to staging's head")
    listing = hwctl("list", "branch", "data").stdout.splitlines()
    staging_head = heads()["staging"]
    assert any(line.split()[:2] == ["master", staging_head] for line in listing)
    assert any(line.split()[:2] == ["staging", staging_head] for line in listing)
    made_on_master = [c["id"] for c in json_lines("list", "commit", "data") if c["branch"] == "master"]
    assert made_on_master == [small]  # master points at staging's commit: no copy was made


def test_every_second_commit_fires_with_trigger_commits_2(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@master", "--trigger", "staging", "--trigger-commits", "2")
    canary()
    hwctl("create", "branch", "data@staging")  # its empty first commit does not count
    seen = []
    for i in range(6):
        head = put_and_settle(b"%d" % i)
        seen.append(heads()["master"] == head)
    assert seen == [False, True, False, True, False, True]
    assert len(trigger_moves(headwater, "master")) == 3


def test_size_accumulates_over_several_commits(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@master", "--trigger", "staging", "--trigger-size", "10KiB")
    canary()
    moved = [put_and_settle(os.urandom(4096)) == heads()["master"] for _ in range(6)]
    assert moved == [False, False, True, False, False, True]  # 12 KiB new, then 12 KiB more


def test_any_condition_by_default_all_of_them_with_trigger_all(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    conditions = ["--trigger-size", "1MB", "--trigger-commits", "2"]
    hwctl("create", "branch", "data@any", "--trigger", "staging", *conditions)
    hwctl("create", "branch", "data@all", "--trigger", "staging", *conditions, "--trigger-all")
    canary()
    assert "staging on Size(1MB) and Commits(2)" in hwctl("list", "branch", "data").stdout
    put_and_settle(b"1")
    second = put_and_settle(b"2")
    assert heads()["any"] == second  # two commits are enough for "any"
    assert heads()["all"] != second  # ... but not a megabyte
    put_and_settle(os.urandom(600_000))
    big = put_and_settle(os.urandom(600_000))
    assert heads()["all"] == big


def test_a_chain_fires_in_one_pass(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@b", "--trigger", "a", "--trigger-commits", "1")
    hwctl("create", "branch", "data@c", "--trigger", "b", "--trigger-commits", "1")
    head = put("a", b"one commit")
    eventually(lambda: heads()["c"] == head, "c follows b follows a")
    [moved_b] = trigger_moves(headwater, "b")
    [moved_c] = trigger_moves(headwater, "c")
    assert moved_b["command"] == moved_c["command"]  # one firing moved both


def test_hand_moves_of_the_source_do_not_fire(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    first = put("staging", b"1")
    put("staging", b"2")
    hwctl("create", "branch", "data@master", "--trigger", "staging", "--trigger-all")
    canary()
    canary("other")
    hwctl("create", "branch", "data@staging", "--head", first)
    put_and_settle(b"news on another branch", source="other")  # the service has read past the move
    assert heads()["master"] != first
    assert trigger_moves(headwater, "master") == []
    head = put_and_settle(b"3")  # a commit is news again
    assert heads()["master"] == head
    hwctl("create", "branch", "data@master", "--head", first)  # a hand move keeps the trigger
    assert "staging on" in hwctl("inspect", "branch", "data@master").stdout
    assert put_and_settle(b"4") == heads()["master"]


def test_cron_fires_at_the_tick_only_with_new_data(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    start = put("master", b"0")
    before = time.monotonic()
    hwctl("create", "branch", "data@master", "--trigger", "staging", "--trigger-cron", "@every 3s")
    assert "staging on Cron(@every 3s)" in hwctl("list", "branch", "data").stdout
    canary()
    staged = put_and_settle(b"1")
    if time.monotonic() - before < 3:  # (on a machine slow enough to take 3 s, the tick came first)
        assert heads()["master"] == start  # judged on the commit: no tick yet since the trigger was set
    eventually(lambda: heads()["master"] == staged, "the tick moves master", timeout=6)
    time.sleep(3.5)  # a tick with nothing new: no move
    assert len(trigger_moves(headwater, "master")) == 1
    newer = put("staging", b"2")  # a tick has passed since master moved: this commit fires
    eventually(lambda: heads()["master"] == newer, "a commit after a tick fires", timeout=3)
    assert len(trigger_moves(headwater, "master")) == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--trigger", "master", "--trigger-commits", "1"], 'branch "master" cannot trigger on itself'),
        (
            ["--trigger", "loop", "--trigger-commits", "1"],
            "triggers cannot form a loop: master -> loop -> master",
        ),
        (["--trigger", "staging", "--trigger-size", "1 elephant"], 'invalid trigger size "1 elephant"'),
        (
            ["--trigger", "staging", "--trigger-commits", "-2"],
            "cannot trigger on a negative number of commits",
        ),
        (["--trigger", "staging", "--trigger-cron", "every day"], 'invalid trigger cron spec "every day"'),
        (["--trigger", "staging"], "has no condition"),
        (["--trigger-size", "1MB"], "need --trigger BRANCH"),
    ],
)
def test_bad_triggers_are_refused_with_a_reason_and_change_nothing(
    headwater: Home, flags: list[str], message: str
) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@master")
    hwctl("create", "branch", "data@loop", "--trigger", "master", "--trigger-commits", "1")
    before = json_lines("list", "branch", "data")
    code, err = error_of("create", "branch", "data@master", *flags)
    assert code == 1
    assert message in err
    assert json_lines("list", "branch", "data") == before


def test_provenance_and_a_trigger_do_not_mix(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "repo", "out")
    hwctl("create", "branch", "data@master")
    args = ["--trigger", "dev", "--trigger-commits", "1"]
    code, err = error_of("create", "branch", "out@master", "-p", "data@master", *args)
    assert (code, "a branch cannot have both provenance and a trigger" in err) == (1, True)


def test_a_restart_in_the_middle_loses_no_fire_and_does_none_twice(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@master", "--trigger", "staging", "--trigger-commits", "2")
    put("staging", b"1")
    runtime: Any = headwater.load()
    os.kill(runtime.services["triggers"], signal.SIGKILL)
    news = put("staging", b"2")  # the news arrives while nobody judges
    hwctl("up")  # brings triggers back: it replays the log and judges what it finds
    eventually(lambda: heads()["master"] == news, "the fire missed while down happens on start")
    for _ in range(2):  # restarts with nothing new fire nothing again
        runtime = headwater.load()
        os.kill(runtime.services["triggers"], signal.SIGKILL)
        hwctl("up")
    canary()
    put_and_settle(b"3")
    assert [m["event"]["head"] for m in trigger_moves(headwater, "master")] == [news]


def test_a_cron_tick_missed_while_down_fires_once_on_start(headwater: Home) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@master", "--trigger", "staging", "--trigger-cron", "@every 3s")
    canary()
    before = time.monotonic()
    staged = put_and_settle(b"1")  # judged: no tick yet since master was made, so no move
    runtime: Any = headwater.load()
    os.kill(runtime.services["triggers"], signal.SIGKILL)
    if time.monotonic() - before < 3:  # (unless the machine took 3 s to get here)
        assert heads()["master"] != staged
    time.sleep(3.5)  # the tick comes while nobody judges
    hwctl("up")
    eventually(lambda: heads()["master"] == staged, "the missed tick fires on start")
    time.sleep(3.5)  # the next tick has nothing new
    assert len(trigger_moves(headwater, "master")) == 1


def test_busy_sources_are_followed_to_their_last_commit(headwater: Home) -> None:
    """Commits finishing while fires are on their way must be neither lost nor left waiting.

    Four followed branches each take a quick burst of commits (copies: no bytes to upload) from a
    client of their own, so commits land while the triggers service has fires in flight."""
    hwctl("create", "repo", "data")
    put("seed", b"seed")
    pairs = {"staging": "master", "dev": "qa", "a": "b", "c": "d"}
    for source, follower in pairs.items():
        hwctl("create", "branch", f"data@{follower}", "--trigger", source, "--trigger-commits", "1")
    runtime: Any = headwater.load()
    asyncio.run(_bursts(runtime.nats_url, list(pairs), commits=60))
    for source, follower in pairs.items():
        eventually(
            lambda s=source, f=follower: heads()[f] == heads()[s], f"{follower} follows {source} to the end"
        )


async def _bursts(nats_url: str, branches: list[str], commits: int) -> None:
    nc = await nats.connect(nats_url)
    client = CommandClient(nc)

    async def burst(branch: str) -> None:
        for i in range(commits):
            copy = CopyFiles(
                src_repo="data", src_ref="seed", src_path="/", repo="data", ref=branch, path=f"/{i}"
            )
            while True:  # the same command again, as clients retry a conflict: it lands once
                try:
                    await client.request(SERVICE, copy, timeout=30)
                    break
                except TransientError:
                    await asyncio.sleep(0.01)

    try:
        await asyncio.gather(*(burst(b) for b in branches))
    finally:
        await nc.close()


def test_two_replicas_fire_each_trigger_once(headwater: Home, hw_home: Path) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@b", "--trigger", "a", "--trigger-commits", "1")
    hwctl("create", "branch", "data@c", "--trigger", "b", "--trigger-all")
    runtime: Any = headwater.load()
    log_path = hw_home / "logs" / "triggers-2.log"
    with open(log_path, "ab") as log:
        second = subprocess.Popen(
            [sys.executable, "-m", "hw_triggers"],
            env={**os.environ, "HW_NATS_URL": runtime.nats_url, "HW_LOG_LEVEL": "info"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: "service_ready" in log_path.read_text(), "the second replica is ready")
        for i in range(12):
            head = put("a", b"%d" % i)
            eventually(lambda head=head: heads()["c"] == head, "c follows a through b")  # type: ignore[misc]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    for branch in ("b", "c"):
        moves = trigger_moves(headwater, branch)
        assert len(moves) == 12
        assert max(Counter(m["event"]["head"] for m in moves).values()) == 1
