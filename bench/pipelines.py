"""Pipelines: per-datum overhead, skipping, job start latency and scaling over workers.

Each runs against a Headwater of its own (`hwctl up`) and is compared with a baseline measured in
the same run on the same machine:

- per-datum overhead: a job of N datums running `true` on 2 workers, against N bare spawns of
  `true` from 2 threads; the difference per datum is Headwater's overhead.
- skipping: a job whose N datums are all unchanged (a commit outside the glob), from the job's
  creation to its end, per datum; the baseline is the same job's first run, per datum.
- start latency: from an input commit finishing (its time in the log) to its job starting
  (`JobStarted`) and to its first datum's user code starting (the worker's log line), over many
  commits; the baseline is the time `hwctl put file` takes to make such a commit.
- scaling: CPU-bound datums on 2 workers against 1 worker, once a first job has the workers
  running (what is measured is datums spread over workers, not processes starting); the median
  of 3 rounds of both, since the 2-worker job takes about a second.

Finished jobs are looked for twice a second: durations come from the jobs' own times, and
`hwctl` run more often takes CPU from the very workers being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import nats

from bench.files import headwater
from bench.report import Result, progress
from bench.triggers import _p
from hw_events import subjects
from hw_events.store import read_messages
from hwctl.home import Home
from tests.e2e.cli import HWCTL

CPU_WORK = "import sys; sum(i * i for i in range(1_500_000))"


def _hwctl(env: dict[str, str], *args: str, stdin: bytes = b"") -> str:
    done = subprocess.run([HWCTL, *args], env=env, input=stdin, check=True, capture_output=True)
    return done.stdout.decode()


def _jobs(env: dict[str, str], pipeline: str) -> list[dict[str, Any]]:
    out = _hwctl(env, "list", "job", "-p", pipeline, "-o", "json")
    return list(reversed([json.loads(line) for line in out.splitlines()]))


def _settled(env: dict[str, str], pipeline: str, count: int, timeout: float = 900) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _jobs(env, pipeline)
        if len(found) >= count and all(j["state"] in ("success", "failure", "killed") for j in found):
            if any(j["state"] != "success" for j in found):
                raise RuntimeError(f"a job of {pipeline} did not succeed: {found[-1]}")
            return found
        time.sleep(0.5)  # (see the module's doc)
    raise RuntimeError(f"{pipeline}: {count} jobs did not finish within {timeout:g}s")


def _seconds(job: dict[str, Any], start: str = "started") -> float:
    return (datetime.fromisoformat(job["finished"]) - datetime.fromisoformat(job[start])).total_seconds()


def _pipeline(
    env: dict[str, str], folder: Path, name: str, cmd: list[str], *, glob: str, workers: int
) -> None:
    spec = {
        "pipeline": {"name": name},
        "transform": {"cmd": cmd},
        "input": {"pfs": {"repo": "bench", "glob": glob}},
        "parallelism_spec": {"constant": workers},
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    _hwctl(env, "create", "pipeline", "-f", str(path))


def _files(folder: Path, n: int) -> Path:
    many = folder / "many" / "d"
    many.mkdir(parents=True)
    for i in range(n):
        (many / f"f{i:06}").write_text(str(i))
    return many.parent


def _bare_spawns(n: int, threads: int = 2) -> float:
    def spawn(count: int) -> None:
        for _ in range(count):
            subprocess.run(["true"], check=True)

    workers = [threading.Thread(target=spawn, args=(n // threads,)) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


@contextlib.contextmanager
def _headwater_with_files(datums: int) -> Iterator[tuple[dict[str, str], Path]]:
    """A Headwater of its own whose repo `bench` holds `datums` files under `/d`; (env, workdir)."""
    with tempfile.TemporaryDirectory(prefix="hw-bench-pps-") as workdir, headwater(Path(workdir)) as env:
        progress(f"putting {datums} files...")
        _hwctl(env, "put", "file", "-r", "bench@master:/", "-f", str(_files(Path(workdir), datums)))
        yield env, Path(workdir)


def overhead(*, datums: int) -> list[Result]:
    with _headwater_with_files(datums) as (env, folder):
        progress(f"running {datums} datums of `true` on 2 workers...")
        _pipeline(env, folder, "nothing", ["true"], glob="/d/*", workers=2)
        (first,) = _settled(env, "nothing", 1)
        job_time = _seconds(first)
        bare = _bare_spawns(datums)
        progress(f"  job {job_time:.2f} s, bare spawns {bare:.2f} s")
    per_datum = job_time * 2 / datums * 1000  # worker-ms per datum, 2 workers
    per_spawn = bare * 2 / datums * 1000
    return [
        Result(
            f"per-datum time, {datums} datums of `true` on 2 workers",
            per_datum,
            per_spawn,
            "ms",
            "a bare spawn of `true` on 2 threads",
            "overhead < 5 ms/datum",
            lambda r: r.headwater - r.baseline < 5,
        )
    ]


def skipping(*, datums: int) -> list[Result]:
    with _headwater_with_files(datums) as (env, folder):
        progress(f"copying {datums} files, one output per datum, on 2 workers...")
        _pipeline(env, folder, "copy", ["sh", "-c", "cp /pfs/bench/d/* /pfs/out/"], glob="/d/*", workers=2)
        (copied,) = _settled(env, "copy", 1, timeout=3600)
        progress(f"  {_seconds(copied):.1f} s")
        progress(f"skipping {datums} unchanged datums (each with an output kept)...")
        _hwctl(env, "put", "file", "bench@master:/outside", stdin=b"not matched by the glob")
        second = _settled(env, "copy", 2)[-1]
        if second["data_skipped"] != datums:
            raise RuntimeError(f"expected {datums} skipped datums, got {second}")
        skip_time = _seconds(second, "created")
        progress(f"  skipping job {skip_time:.3f} s")
    return [
        Result(
            f"skipped datum, {datums:,} unchanged, outputs kept (job created -> finished)",
            skip_time / datums * 1e6,
            _seconds(copied) / datums * 1e6,
            "µs",
            "the same datums run (first job), per datum",
            "< 20 µs/datum",
            lambda r: r.headwater < 20,
        ),
        Result(
            f"job of {datums:,} unchanged datums (created -> finished)",
            skip_time,
            _seconds(copied),
            "s",
            "the same job's first run",
            "< 2 s at 100,000",
            lambda r: r.headwater < 2,
        ),
    ]


async def _start_latencies(nats_url: str, pipeline: str) -> tuple[list[float], list[float]]:
    nc = await nats.connect(nats_url)
    try:
        fs_msgs = await read_messages(nc.jetstream(), subjects.FS_STREAM, subjects.repo_events("bench"))
        pps_msgs = await read_messages(nc.jetstream(), subjects.PPS_STREAM, subjects.job_events(pipeline))
        logs = await read_messages(nc.jetstream(), subjects.LOGS_STREAM, subjects.log_subject(pipeline))
    finally:
        await nc.close()
    finished: dict[str, float] = {}
    for msg in fs_msgs:
        event = msgspec.json.decode(msg.data)["event"]
        if event["type"] == "commit_finished":
            finished[event["commit"]] = msg.metadata.timestamp.timestamp()
    started, running = [], []
    for msg in pps_msgs:
        event = msgspec.json.decode(msg.data)["event"]
        if event["type"] == "job_started" and event["job"] in finished:
            started.append((msg.metadata.timestamp.timestamp() - finished[event["job"]]) * 1000)
    first_line: dict[str, float] = {}
    for msg in logs:
        line = msgspec.json.decode(msg.data)
        if line.get("message") == "beginning to run user code":
            first_line.setdefault(line["job"], datetime.fromisoformat(line["ts"]).timestamp())
    for job, at in first_line.items():
        if job in finished:
            running.append((at - finished[job]) * 1000)
    return started, running


def start_latency(*, commits: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="hw-bench-start-") as workdir, headwater(Path(workdir)) as env:
        folder = Path(workdir)
        _pipeline(
            env,
            folder,
            "echo",
            ["sh", "-c", "cp /pfs/bench/* /pfs/out/ 2>/dev/null; true"],
            glob="/",
            workers=1,
        )
        _settled(env, "echo", 1)
        progress(f"timing job starts over {commits} commits...")
        puts = []
        for i in range(commits):
            begin = time.perf_counter()
            _hwctl(env, "put", "file", f"bench@master:/f{i}", stdin=b"%d" % i)
            puts.append((time.perf_counter() - begin) * 1000)
            _settled(env, "echo", i + 2)
        runtime = Home(env["HW_HOME"]).load()
        assert runtime is not None
        started, running = asyncio.run(_start_latencies(runtime.nats_url, "echo"))
    if len(started) < commits:
        raise RuntimeError(f"{commits} commits should have started {commits} jobs, not {len(started)}")
    put50 = statistics.median(puts)
    return [
        Result(
            "job start latency p50 (commit finished -> job running)",
            statistics.median(started),
            put50,
            "ms",
            "`hwctl put file` of one small file, p50",
            "p50 < 50 ms",
            lambda r: r.headwater < 50,
        ),
        Result(
            "job start latency p99",
            _p(started, 99),
            _p(puts, 99),
            "ms",
            "`hwctl put file`, p99",
            "(reported)",
            lambda r: True,
        ),
        Result(
            "first datum running p50 (commit finished -> user code starts)",
            statistics.median(running),
            put50,
            "ms",
            "`hwctl put file` of one small file, p50",
            "(reported)",
            lambda r: True,
        ),
    ]


def scaling(*, datums: int, rounds: int = 3) -> list[Result]:
    """1 worker, then 2, `rounds` times; the median of the rounds' speed-ups (a job of 2 workers
    takes about a second, so a moment of other work on the machine moves one round a lot)."""
    with tempfile.TemporaryDirectory(prefix="hw-bench-scale-") as workdir, headwater(Path(workdir)) as env:
        folder = Path(workdir)
        many = _files(folder, datums)
        speed_ups = []
        for round_ in range(1, rounds + 1):
            times = {}
            for workers in (1, 2):
                progress(f"{datums} CPU-bound datums on {workers} worker(s), round {round_} of {rounds}...")
                name = f"cpu{workers}r{round_}"
                # The workers start with the pipeline: a first job of one datum waits for them, so
                # what is measured is datums spread over running workers, not processes starting.
                _hwctl(env, "put", "file", "bench@master:/d/warm-up", stdin=b"0")
                _pipeline(env, folder, name, [sys.executable, "-c", CPU_WORK], glob="/d/*", workers=workers)
                _settled(env, name, 1)
                time.sleep(1.0)
                _hwctl(env, "put", "file", "-r", "bench@master:/", "-f", str(many))
                job = _settled(env, name, 2)[-1]
                times[workers] = _seconds(job)
                progress(f"  {times[workers]:.2f} s")
                _hwctl(env, "delete", "pipeline", name)
                _hwctl(env, "delete", "repo", "bench")  # the next run starts from an empty repo
                _hwctl(env, "create", "repo", "bench")
            speed_ups.append(times[1] / times[2])
            progress(f"  round {round_}: {speed_ups[-1]:.2f}x")
    return [
        Result(
            f"speed-up of {datums} CPU-bound datums, 2 workers vs 1 (median of {rounds} rounds)",
            statistics.median(speed_ups),
            1.0,
            "x",
            "1 worker",
            ">= 1.8x",
            lambda r: r.headwater >= 1.8,
        )
    ]


def run_all(*, quick: bool) -> list[Result]:
    os.environ.setdefault("HW_LOG_LEVEL", "warning")
    results = overhead(datums=200 if quick else 2000)
    results += skipping(datums=2000 if quick else 100_000)
    results += start_latency(commits=10 if quick else 100)
    results += scaling(datums=6 if quick else 20, rounds=1 if quick else 3)
    return results
