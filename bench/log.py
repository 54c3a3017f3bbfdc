"""The event log: replay into a projection vs a raw ordered consumer; pipelined appends vs raw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats

from bench.report import Result, median_of, progress
from hw_events import streams
from hw_events.fs import RepoCreated, RepoDeleted
from hw_events.messages import Envelope, Version, new_id, utcnow
from hw_events.projection import Projector
from hw_events.store import Append, EventStore
from hw_events.streams import StreamKind, StreamSpec
from hw_fs.domain import PROJECTION

REPOS = 1000


def fs_events(n: int) -> list[Any]:
    """A realistic mix: repos created and deleted over and over (the state stays small)."""
    now = utcnow()
    out: list[Any] = []
    for i in range(n):
        repo = f"repo-{i % REPOS}"
        if (i // REPOS) % 2 == 0:
            out.append(RepoCreated(repo=repo, description="benchmark repo", created=now))
        else:
            out.append(RepoDeleted(repo=repo))
    return out


async def fill(nc: Any, spec: StreamSpec, n: int) -> None:
    """Store events as the fs service does: each checked against its repo's version, each with the
    id of the command that caused it (so messages carry the same headers and fields)."""
    store = EventStore(nc)
    events = fs_events(n)
    subject = spec.subjects[0].replace(">", "{}")
    versions: dict[str, Version] = {}
    for start in range(0, n, REPOS):  # each repo once per chunk: one expected version each
        chunk = [(subject.format(e.repo), e) for e in events[start : start + REPOS]]
        appends = [Append(s, [e], versions.get(s, Version.new()), command_id=new_id()) for s, e in chunk]
        for (s, _), version in zip(chunk, await store.append_many(appends), strict=True):
            versions[s] = version


def count_to(n: int, done: asyncio.Future[None]) -> Callable[[Any], Awaitable[None]]:
    """A raw subscription's callback that only counts, and sets `done` at the `n`th message."""
    count = 0

    async def on_msg(msg: Any) -> None:
        nonlocal count
        count += 1
        if count == n and not done.done():
            done.set_result(None)

    return on_msg


async def raw_replay(nc: Any, spec: StreamSpec, n: int) -> float:
    """The baseline: nats-py's ordered consumer, counting messages until the last one."""
    js = nc.jetstream()
    done = asyncio.get_running_loop().create_future()
    start = time.perf_counter()
    sub = await js.subscribe(spec.subjects[0], stream=spec.name, cb=count_to(n, done), ordered_consumer=True)
    await done
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return n / elapsed


async def projector_replay(nc: Any, spec: StreamSpec, n: int) -> float:
    """Headwater: the fs service's projection, decoding and folding every event, from the start."""
    start = time.perf_counter()
    projector = Projector(nc, spec, PROJECTION)
    await projector.start()
    await projector.wait_ready(600)
    elapsed = time.perf_counter() - start
    assert projector.read == n, (projector.read, n)
    await projector.stop(snapshot=False)
    return n / elapsed


async def replay(url: str, n: int = 200_000, runs: int = 3) -> Result:
    nc = await nats.connect(url)
    spec = StreamSpec("BENCH_REPLAY", ("bench.replay.>",), StreamKind.EVENTS)
    await streams.ensure_stream(nc.jetstream(), spec)
    progress(f"writing {n:,} events for the replay benchmark...")
    await fill(nc, spec, n)
    raw, ours = [], []
    for run in range(runs):
        raw.append(await raw_replay(nc, spec, n))
        ours.append(await projector_replay(nc, spec, n))
        progress(f"  replay run {run + 1}: raw {raw[-1]:,.0f}/s, projector {ours[-1]:,.0f}/s")
    await nc.close()
    return Result(
        f"replay {n:,} events into a projection",
        median_of(ours),
        median_of(raw),
        "events/s",
        "raw ordered consumer",
        ">= 0.80",
        lambda r: r.ratio >= 0.8,
    )


async def raw_publish_async(nc: Any, subject: str, payloads: list[bytes]) -> float:
    js = nc.jetstream(publish_async_max_pending=4000)
    start = time.perf_counter()
    for i, payload in enumerate(payloads):
        await js.publish_async(f"{subject}.{i}", payload)
    await js.publish_async_completed()
    return len(payloads) / (time.perf_counter() - start)


async def store_append_many(nc: Any, subject: str, events: list[Any]) -> float:
    store = EventStore(nc)
    start = time.perf_counter()
    for first in range(0, len(events), 10_000):
        chunk = events[first : first + 10_000]
        appends = [Append(f"{subject}.{first + i}", [e], Version.new()) for i, e in enumerate(chunk)]
        await store.append_many(appends)
    return len(events) / (time.perf_counter() - start)


async def appends(url: str, n: int = 50_000, runs: int = 3) -> Result:
    nc = await nats.connect(url)
    js = nc.jetstream()
    events = fs_events(n)
    encoder = msgspec.json.Encoder()
    now = utcnow()
    # The baseline publishes the same bytes Headwater stores (envelope included), without checks.
    payloads = [
        encoder.encode(Envelope(id="x", aggregate="bench", version=1, time=now, event=e)) for e in events
    ]
    raw, ours = [], []
    for run in range(runs):
        # Both write to streams configured alike (Headwater's event-stream settings).
        for name in ("raw", "hw"):
            spec = StreamSpec(f"BENCH_{name.upper()}_{run}", (f"bench.{name}{run}.>",), StreamKind.EVENTS)
            await streams.ensure_stream(js, spec)
        raw.append(await raw_publish_async(nc, f"bench.raw{run}", payloads))
        ours.append(await store_append_many(nc, f"bench.hw{run}", events))
        progress(f"  append run {run + 1}: raw publish_async {raw[-1]:,.0f}/s, store {ours[-1]:,.0f}/s")
    await nc.close()
    return Result(
        f"pipelined appends ({n:,}, checked + deduplicated)",
        median_of(ours),
        median_of(raw),
        "events/s",
        "raw publish_async",
        ">= 0.50",
        lambda r: r.ratio >= 0.5,
    )
