"""The worker service: keeps `parallelism_spec.constant` worker processes (`hw_worker.pool`) per
pipeline, as the pipeline events say, and starts again any that dies.

This is the embedded default's stand-in for what Kubernetes does with one Deployment per pipeline:
the processes take datums from their pipeline's queue and need nothing from this one. A worker
process dies with the service (the kernel tells it: `PR_SET_PDEATHSIG`), so a service killed and
started again never leaves two sets behind.

Each process keeps a list of the tasks it holds (`workqueue.HeldTasks`); when one dies, or is
stopped before it finished them, its tasks are handed back at once, so another worker takes them
now rather than after `HW_DATUM_ACK_WAIT` without heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import nats
from nats.js.errors import NotFoundError

from hw_events import datum_queue, streams
from hw_events.bus import Handler
from hw_events.errors import ServiceUnavailable
from hw_events.messages import Command
from hw_events.projection import Projector
from hw_events.service import Runtime
from hw_events.workqueue import hand_back
from hw_worker import domain
from hw_worker.domain import Pools
from hw_worker.pfs import alive

LOOK_AGAIN = 1.0  # seconds between checks that every process still runs
# Seconds a worker gets to stop (it kills its user code after pool.GRACE); less than the 10 s the
# service gives its background loops to end, so the supervisor usually then hands back what they
# held (not when a stop of surplus workers was under way: then they come back after the ack wait).
STOP_WITHIN = 8.0
QUICK_EXIT = 5.0  # a worker gone this soon after starting did not get going


class Supervisor:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pools = cast(Projector[Pools], rt.projector(domain.POOLS.name))
        self.running: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.cleared: set[str] = set()
        self.purged: set[str] = set()
        self.started: dict[int, float] = {}  # pid -> when
        self.failures: dict[str, int] = {}  # pipeline -> worker exits right after starting, in a row
        self.not_before: dict[str, float] = {}
        _sweep_held_lists()
        self.held_in = Path(tempfile.mkdtemp(prefix=f"{HELD_PREFIX}{os.getpid()}-"))
        self.held: dict[int, tuple[Path, float]] = {}  # pid -> the file of the tasks it holds, ack wait
        self._numbers = itertools.count(1)
        self.log = rt.log.bind(component="supervisor")

    async def run(self) -> None:
        forgot_shared = False
        try:
            while not self.rt.stopping.is_set():
                try:
                    if not forgot_shared:
                        await self._forget_consumer(datum_queue.SHARED_DURABLE)
                        forgot_shared = True
                    await self.converge()
                except Exception:  # NATS away for a moment, a process that cannot start: go on
                    self.log.exception("supervising_failed")
                await self._news(self.pools.applied)
        finally:
            stopped = [p for procs in self.running.values() for p in procs]
            await asyncio.to_thread(self.stop_all)
            with contextlib.suppress(Exception):  # (NATS gone: they come back after their ack_wait)
                await self._hand_back(stopped)
            shutil.rmtree(self.held_in, ignore_errors=True)

    async def _news(self, mark: int) -> None:
        with contextlib.suppress(ServiceUnavailable):  # after LOOK_AGAIN: see to the processes
            await self.pools.wait_until(lambda _: self.pools.applied != mark, LOOK_AGAIN, "pipelines")

    async def converge(self) -> None:
        now = time.monotonic()
        for name, procs in self.running.items():
            for proc in [p for p in procs if p.poll() is not None]:
                self.log.warning("worker_exited", pipeline=name, pid=proc.pid, code=proc.returncode)
                procs.remove(proc)
                # One that dies at once (a broken setup) is started again ever more slowly.
                quick = now - self.started.pop(proc.pid, now) < QUICK_EXIT
                self.failures[name] = self.failures.get(name, 0) + 1 if quick else 0
                self.not_before[name] = now + min(2.0 ** self.failures[name], 30.0) if quick else 0.0
                await self._hand_back([proc])
        counts = {name: len(procs) for name, procs in self.running.items()}
        surplus: list[subprocess.Popen[bytes]] = []
        for name, delta in domain.changes(self.pools.state.wanted(), counts).items():
            procs = self.running.setdefault(name, [])
            if delta > 0 and now < self.not_before.get(name, 0.0):
                continue
            for _ in range(delta):
                procs.append(self.start(name))
            surplus += [procs.pop() for _ in range(-delta)]
        if surplus:
            await asyncio.to_thread(_stop, surplus)  # all at once: a stop may take STOP_WITHIN
            await self._hand_back(surplus)
        self.cleared &= self.pools.state.deleted  # made again and deleted again: clear again
        for name in self.pools.state.deleted - self.cleared:
            await self.clear(name)
        # A stopped pipeline's jobs were killed: their queued datums need not run.
        for name in self.pools.state.paused - self.purged:
            await self._purge(name)
            self.purged.add(name)
        self.purged &= self.pools.state.paused

    def start(self, pipeline: str) -> subprocess.Popen[bytes]:
        held = self.held_in / str(next(self._numbers))
        env = {**os.environ, "HW_WORKER_PARENT": str(os.getpid()), "HW_WORKER_HELD": str(held)}
        proc = subprocess.Popen([sys.executable, "-m", "hw_worker.pool", pipeline], env=env)
        self.started[proc.pid] = time.monotonic()
        self.held[proc.pid] = (held, datum_queue.queue_for(pipeline).ack_wait)
        self.log.info("worker_started", pipeline=pipeline, pid=proc.pid)
        return proc

    async def _hand_back(self, gone: list[subprocess.Popen[bytes]]) -> None:
        for proc in gone:
            held = self.held.pop(proc.pid, None)
            if held is None:
                continue
            try:
                handed = await self._hand_back_one(held[0], held[1])
            except Exception as err:  # (NATS away: they come back after their ack wait)
                self.log.warning("hand_back_failed", pid=proc.pid, error=f"{type(err).__name__}: {err}")
                continue
            if handed:
                self.log.info("tasks_handed_back", pid=proc.pid, tasks=handed)

    async def _hand_back_one(self, held: Path, ack_wait: float) -> int:
        # A connection of its own that never reconnects: naks buffered across a reconnect could
        # go out after the tasks were delivered again, and take them from their new workers.
        nc = await nats.connect(self.rt.settings.nats_url, allow_reconnect=False, connect_timeout=2)
        try:
            return await hand_back(nc, held, ack_wait=ack_wait)
        finally:
            await nc.close()

    async def clear(self, pipeline: str) -> None:
        """A deleted pipeline's consumer and queued tasks go (a pipeline made again is new)."""
        if pipeline in self.pools.state.workers:
            return
        for queue in datum_queue.queues_of(pipeline):
            await self._forget_consumer(queue.durable)
        await self._purge(pipeline)
        self.cleared.add(pipeline)

    async def _purge(self, pipeline: str) -> None:
        for queue in datum_queue.queues_of(pipeline):
            with contextlib.suppress(NotFoundError):
                await self.rt.js.purge_stream(streams.TASKS.name, subject=queue.subject)

    async def _forget_consumer(self, durable: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.rt.js.delete_consumer(streams.TASKS.name, durable)

    def stop_all(self) -> None:
        _stop([p for procs in self.running.values() for p in procs])
        self.running.clear()


HELD_PREFIX = "hw-worker-held-"


def _sweep_held_lists() -> None:
    """Remove what worker services that were killed left of their lists of held tasks."""
    for folder in Path(tempfile.gettempdir()).glob(f"{HELD_PREFIX}*-*"):
        pid = folder.name.removeprefix(HELD_PREFIX).partition("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def setup(rt: Runtime) -> Mapping[type[Command], Handler]:
    rt.background(Supervisor(rt).run)
    return {}
