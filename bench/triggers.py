"""Trigger latency: from a commit finishing on a source branch to the triggered branch's head moving.

Both moments are read from the log itself (the times JetStream stored the two events), so the
figure covers the whole path: fs appends the commit, the triggers service reads it, judges, and asks
fs to move the branch, which appends the move. The baseline in the same run is one head move asked
of fs directly (`create branch --head` over the bus, timed by the client): a firing costs about
one such command plus reading the log.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec
import nats

from bench.files import headwater
from bench.report import Result, progress
from hw_events import fs, subjects
from hw_events.bus import CommandClient
from hw_events.store import read_messages
from hwctl.home import Home
from tests.e2e.cli import HWCTL


def _p(samples: list[float], q: float) -> float:
    return (
        statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]
        if len(samples) > 1
        else samples[0]
    )


async def _latencies(nats_url: str) -> list[float]:
    """Milliseconds from each CommitFinished on staging to the trigger move of master to it."""
    nc = await nats.connect(nats_url)
    try:
        messages = await read_messages(nc.jetstream(), subjects.FS_STREAM, subjects.repo_events("bench"))
    finally:
        await nc.close()
    finished: dict[str, float] = {}
    out = []
    for msg in messages:
        event = msgspec.json.decode(msg.data)["event"]
        stored = msg.metadata.timestamp.timestamp()
        if event["type"] == "commit_finished":
            finished[event["commit"]] = stored
        elif event["type"] == "branch_head_moved" and event.get("reason") == fs.BY_TRIGGER:
            out.append((stored - finished[event["head"]]) * 1000)
    return out


async def _hand_moves(nats_url: str, heads: list[str], runs: int) -> list[float]:
    nc = await nats.connect(nats_url)
    client = CommandClient(nc)
    samples = []
    try:
        for i in range(runs):
            command = fs.CreateBranch(repo="bench", branch="by-hand", head=heads[i % len(heads)])
            start = time.perf_counter()
            await client.request(fs.SERVICE, command)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        await nc.close()
    return samples


def latency(*, commits: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="hw-bench-triggers-") as workdir, headwater(Path(workdir)) as env:
        progress(f"timing trigger fires over {commits} commits...")

        def hwctl(*args: str, stdin: bytes = b"") -> str:
            done = subprocess.run([HWCTL, *args], env=env, input=stdin, check=True, capture_output=True)
            return done.stdout.decode()

        hwctl("create", "branch", "bench@master", "--trigger", "staging", "--trigger-commits", "1")
        for i in range(commits):  # one after another, as commits come in practice
            hwctl("put", "file", f"bench@staging:/f{i}", stdin=b"%d" % i)
        runtime = Home(env["HW_HOME"]).load()
        assert runtime is not None
        time.sleep(0.5)  # the last fire lands
        fired = asyncio.run(_latencies(runtime.nats_url))
        heads = [line.split()[2] for line in hwctl("list", "commit", "bench@staging").splitlines()[1:3]]
        direct = asyncio.run(_hand_moves(runtime.nats_url, heads, commits))
    if len(fired) != commits:
        raise RuntimeError(f"{commits} commits should have fired {commits} times, not {len(fired)}")
    base50 = statistics.median(direct)
    return [
        Result(
            "trigger fire latency p50 (commit finished -> head moved)",
            statistics.median(fired),
            base50,
            "ms",
            "one head move asked of fs directly, p50",
            "p50 < 20 ms",
            lambda r: r.headwater < 20,
        ),
        Result(
            "trigger fire latency p99",
            _p(fired, 99),
            _p(direct, 99),
            "ms",
            "one head move asked of fs directly, p99",
            "(reported)",
            lambda r: True,
        ),
    ]
