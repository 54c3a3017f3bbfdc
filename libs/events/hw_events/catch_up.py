"""Catching a service's projections up with the log at start, on more than one core when that pays.

One projector replays on one core: nats-py's work per message plus the fold. A service keeping
several projections replays them one after the other, since two replays at once on one connection
outrun the client and the server cuts it off as a slow consumer. So when more than one has a long
way to go (`helpers_from` messages or more), all but the longest go to helper processes
(`python -m hw_events.replay_helper`), up to one fewer than the cores. Each replays its projection
from the same snapshot on a connection of its own and answers with the state as snapshot bytes,
while this process replays the longest. Each helped projector then adopts that state and replays
what was appended since, as it would after loading a snapshot.

A helper that fails, or whose state does not fit, costs only time: its projector replays here from
where its own snapshot left it. Helpers die with the service (`PR_SET_PDEATHSIG`) and are killed
when it is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hw_events import observability
from hw_events.projection import Projection, Projector
from hw_events.streams import StreamSpec


@dataclass(frozen=True)
class HelperJob:
    """What a helper process needs to build the projector it replays (sent to it pickled: the
    projection's functions and types travel by reference, as the modules that define them)."""

    service: str
    parent: int
    nats_url: str
    stream: StreamSpec
    projection: Projection[Any]
    subjects: tuple[str, ...]
    remember_commands: int
    snapshot_bucket: str | None  # None: start from the beginning, as the projector would
    snapshot_objects: str | None
    timeout: float

    @classmethod
    def of(cls, projector: Projector[Any], *, service: str, nats_url: str, timeout: float) -> HelperJob:
        store = projector.snapshot_store
        return cls(
            service=service,
            parent=os.getpid(),
            nats_url=nats_url,
            stream=projector.stream,
            projection=projector.projection,
            subjects=projector.subjects,
            remember_commands=projector.remember_commands,
            snapshot_bucket=store.bucket if store else None,
            snapshot_objects=store.objects if store else None,
            timeout=timeout,
        )


def to_help(projectors: Sequence[Projector[Any]], helpers_from: int, cores: int) -> list[Projector[Any]]:
    """Which prepared projectors replay in helpers: those with `helpers_from` or more messages to
    go, save the one with the most (this process replays it), longest first, one fewer than the
    cores at most. None when `helpers_from` is 0."""
    if helpers_from <= 0 or cores < 2 or len(projectors) < 2:
        return []
    longest_first = sorted(projectors, key=lambda p: p.backlog, reverse=True)
    return [p for p in longest_first[1:] if p.backlog >= helpers_from][: cores - 1]


async def catch_up(
    projectors: Sequence[Projector[Any]],
    *,
    service: str,
    nats_url: str,
    helpers_from: int,
    timeout: float,
    stop: asyncio.Event,
) -> bool:
    """Bring every projector up to the log as it is now, all within `timeout` seconds (else
    `ServiceUnavailable`, saying how far each got); False if told to stop first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for projector in projectors:
        await projector.prepare()
    if stop.is_set():
        return False
    helped = to_help(projectors, helpers_from, cores())
    started: dict[int, asyncio.subprocess.Process] = {}
    answers: dict[int, asyncio.Task[bytes | None]] = {}
    try:
        for projector in helped:  # each has its work before this process starts replaying
            job = HelperJob.of(projector, service=service, nats_url=nats_url, timeout=timeout)
            proc = await start_helper(job)
            if proc is not None:
                started[id(projector)] = proc
                answers[id(projector)] = asyncio.create_task(helper_answer(proc, job))
        kept = [p for p in projectors if id(p) not in answers]
        for projector in kept + [p for p in projectors if id(p) in answers]:
            answer = answers.get(id(projector))
            if answer is not None:
                state = await _unless_stopped(answer, stop)
                if stop.is_set():
                    return False
                if state is not None:
                    await _adopted(projector, state)
            await projector.follow()
            # (raises when out of time; a helper that failed leaves less time for its projection,
            # but at least a second, for the events appended while it replayed)
            await _unless_stopped(projector.wait_ready(max(deadline - loop.time(), 1.0)), stop)
            if stop.is_set():
                return False
        return True
    finally:
        for task in answers.values():
            task.cancel()
        await asyncio.gather(*answers.values(), return_exceptions=True)
        for proc in started.values():
            await _ended(proc)  # (nothing, when it answered) a helper still replaying is killed


async def _adopted(projector: Projector[Any], state: bytes) -> bool:
    """`projector.adopt(state)`; False (logged) when it could not, and the projector replays here."""
    try:
        return await projector.adopt(state)
    except Exception as err:  # (the stream's end could not be read) a helper only saves time
        log = observability.log(projection=projector.projection.name, stream=projector.stream.name)
        log.warning("replay_helper_failed", error=f"its state could not be adopted: {err}")
        return False


def cores(cgroup: Path | None = None) -> int:
    """The cores this process may keep busy: those it may run on (a CPU set), but no more than
    its CPU quota, rounded down (a container limited to 1.5 CPUs would only be throttled by a
    second busy process)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(cgroup or own_cgroup())
    return count if quota is None else max(1, min(count, int(quota)))


def own_cgroup(root: Path = Path("/sys/fs/cgroup")) -> Path:
    """This process's cgroup (v2) folder where it has a quota file, else the root: a container
    with a cgroup namespace sees its own there."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return root
    for line in lines:
        if line.startswith("0::"):
            mine = root / line[3:].strip().lstrip("/")
            if (mine / "cpu.max").exists():
                return mine
    return root


def cpu_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time the cgroup allows (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` over
    `cpu.cfs_period_us`); None when unlimited or unknown."""
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            limit = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if limit in ("max", "-1"):
        return None
    try:
        return int(limit) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


async def _unless_stopped(work: Awaitable[Any], stop: asyncio.Event) -> Any:
    """`work`'s result, or None as soon as `stop` is set (the work is then cancelled)."""
    done: asyncio.Future[Any] = asyncio.ensure_future(work)
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        finished, _ = await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled itself: leave nothing running
        done.cancel()
        stopped.cancel()
        raise
    stopped.cancel()
    if done not in finished:
        done.cancel()
        return None
    return done.result()  # a projector that could not catch up in time fails the start, loudly


async def start_helper(job: HelperJob) -> asyncio.subprocess.Process | None:
    """A helper process started on `job`, or None (logged) when the job cannot be sent to one."""
    log = observability.log(projection=job.projection.name, stream=job.stream.name)
    try:
        sent = pickle.dumps(job)
    except (pickle.PicklingError, AttributeError, TypeError) as err:  # e.g. a function made at run time
        log.warning("replay_helper_failed", error=f"the projection cannot be sent to a helper: {err}")
        return None
    # The child imports the projection's modules: let it find them where this process does.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hw_events.replay_helper",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as err:  # (out of processes or memory) a helper only saves time
        log.warning("replay_helper_failed", error=f"it could not be started: {err}")
        return None
    assert proc.stdin is not None
    try:
        proc.stdin.write(sent)
        await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):  # it died at once: its answer says how
        pass
    log.info("replay_helper_started", pid=proc.pid)
    return proc


async def helper_answer(proc: asyncio.subprocess.Process, job: HelperJob) -> bytes | None:
    """What a started helper answers: the replayed state as snapshot bytes; None (logged) when it
    failed or did not answer within `job.timeout` (it is then killed)."""
    log = observability.log(projection=job.projection.name, stream=job.stream.name, pid=proc.pid)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(job.timeout):
            state = await proc.stdout.read()
            code = await proc.wait()
    except TimeoutError:
        log.warning("replay_helper_failed", error=f"no answer within {job.timeout:g}s")
        await _ended(proc)
        return None
    if code != 0:
        log.warning("replay_helper_failed", error=f"it exited with {code}")
        return None
    log.info("replay_helper_answered", bytes=len(state))
    return state


async def _ended(proc: asyncio.subprocess.Process) -> None:
    """Kill `proc` unless it has ended; return once it is reaped. What is left of its answer is
    read and dropped: `wait()` returns only once its pipes are closed, and a pipe paused with
    unread data (more than 128 KiB) would never see the end."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await asyncio.shield(proc.communicate())
