"""A replay helper: `python -m hw_events.replay_helper`, started by `catch_up` with a pickled
`HelperJob` on stdin. It replays one projection from its snapshot to the end of the log and
writes the state to stdout as snapshot bytes; it logs to stderr, as services do, and exits 1 when
it could not (the service then replays that projection itself)."""

from __future__ import annotations

import asyncio
import gc
import pickle
import signal
import sys
import time

from hw_events import children, observability, service
from hw_events.catch_up import HelperJob
from hw_events.projection import Projector
from hw_events.snapshots import SnapshotStore


async def replay(job: HelperJob) -> bytes:
    log = observability.log(projection=job.projection.name, stream=job.stream.name)
    nc = await service.connect(job.nats_url, f"headwater-{job.service}-replay")
    try:
        store = None
        if job.snapshot_bucket is not None and job.snapshot_objects is not None:
            store = SnapshotStore(nc.jetstream(), bucket=job.snapshot_bucket, objects=job.snapshot_objects)
        projector = Projector(
            nc,
            job.stream,
            job.projection,
            subjects=job.subjects,
            snapshots=store,
            snapshot_every=2**62,  # the service saves what it adopts; the helper saves nothing
            remember_commands=job.remember_commands,
        )
        started = time.perf_counter()
        await projector.prepare()
        log.info("replay_helper_replaying", start=projector.applied + 1, backlog=projector.backlog)
        await projector.follow()
        await projector.wait_ready(job.timeout)
        await projector.stop(snapshot=False)
        seconds = round(time.perf_counter() - started, 2)
        log.info("replay_helper_caught_up", read=projector.read, seconds=seconds)
        return projector.snapshot_bytes()
    finally:
        await nc.close()


def main() -> None:
    # (stdin is a pipe from the service that started this process, nothing else writes to it)
    job: HelperJob = pickle.load(sys.stdin.buffer)  # noqa: S301
    children.die_with_parent(job.parent, signal.SIGKILL)  # it holds nothing to save
    observability.configure(job.service)
    gc.set_threshold(service.GC_EVERY, 20, 100)
    try:
        state = asyncio.run(replay(job))
    except Exception:
        observability.log().exception("replay_helper_failed", projection=job.projection.name)
        sys.exit(1)
    sys.stdout.buffer.write(state)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
