"""One worker process of one pipeline: `python -m hw_worker.pool PIPELINE`. The worker service
starts `parallelism_spec.constant` of them per pipeline and starts again any that dies.

It enters a private mount namespace first (before any thread exists), so each datum's folder is
mounted at `/pfs` with two system calls instead of a process; where that is not allowed it falls
back to a namespace per datum, then to path rewriting (see `runner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from hw_events import children, observability, service
from hw_worker import runner
from hw_worker.handlers import Worker

GRACE = 5.0  # seconds a running datum gets to finish when the worker is told to stop


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m hw_worker.pool PIPELINE")
    pipeline = args[0]
    _die_with_parent()
    forced = os.environ.get("HW_WORKER_ISOLATION", "")
    own = forced in ("", runner.NAMESPACE) and runner.enter_own_namespace()
    observability.configure("worker")
    isolation = runner.choose_isolation(forced, own_namespace=own)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        _watch_children_with_pidfd(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        nc = await service.connect(service.Settings().nats_url, f"headwater-worker-{pipeline}")
        try:
            concurrency = int(os.environ.get("HW_WORKER_CONCURRENCY", "2"))
            worker = Worker(nc, pipeline, stopping=stop, isolation=isolation, concurrency=concurrency)
            work = asyncio.ensure_future(worker.run())
            told = asyncio.ensure_future(stop.wait())
            await asyncio.wait({work, told}, return_when=asyncio.FIRST_COMPLETED)
            told.cancel()
            try:  # told to stop: a datum under way may finish within GRACE, else its code is killed
                await asyncio.wait_for(asyncio.shield(work), GRACE)
            except TimeoutError:
                work.cancel()  # cancels the datum: its process group is killed, its task redelivered
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        finally:
            await nc.drain()

    try:
        asyncio.run(run())
    except Exception:
        observability.log().exception("worker_crashed", pipeline=pipeline)
        sys.exit(1)


def _watch_children_with_pidfd(loop: asyncio.AbstractEventLoop) -> None:
    """Python 3.11 waits for each child process (a datum's user code) in a thread started for it;
    with a pidfd (Linux 5.3+) the event loop does it, without that thread. 3.12 does so itself."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # an older kernel: the default stays
    watcher = asyncio.PidfdChildWatcher()
    asyncio.set_child_watcher(watcher)
    watcher.attach_loop(loop)


def _die_with_parent() -> None:
    """Be told (SIGTERM) when the worker service that started this process dies, however it dies."""
    parent = os.environ.get("HW_WORKER_PARENT")
    if parent:
        children.die_with_parent(int(parent))


if __name__ == "__main__":
    main()
