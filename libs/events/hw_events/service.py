"""The runtime every Headwater service shares: one process, one shape.

    connect to NATS -> make sure its streams exist -> answer health (not ready yet)
    -> replay its projections (snapshot + tail) -> take commands -> follow the log live
    -> on SIGTERM: stop taking commands, finish those in flight, save snapshots, close.

A service supplies a `ServiceSpec`: its name, the projections it keeps and a `setup` that returns
its command handlers (and may start background loops). `Runtime.execute` is the one way handlers
write: decide on current state, append with optimistic concurrency, retry on conflict, and answer a
retried command from what it already did.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors

from hw_events import __version__, observability, streams, subjects
from hw_events.bus import CommandClient, CommandServer, Handler, encode_ok
from hw_events.catch_up import catch_up
from hw_events.errors import ConcurrencyConflict
from hw_events.health import Health
from hw_events.messages import Command, Event, utcnow
from hw_events.projection import Projection, Projector
from hw_events.snapshots import SnapshotStore
from hw_events.store import Append, EventStore
from hw_events.streams import StreamSpec

S = TypeVar("S")


@dataclass(frozen=True)
class Replay:
    """A projection a service keeps, over which stream (and optionally which subjects of it)."""

    stream: StreamSpec
    projection: Projection[Any]
    subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    replays: Sequence[Replay] = ()
    setup: Callable[[Runtime], Mapping[type[Command], Handler]] = lambda _: {}
    streams: Sequence[StreamSpec] = streams.ALL


@dataclass
class Settings:
    nats_url: str = field(default_factory=lambda: os.environ.get("HW_NATS_URL", "nats://127.0.0.1:4222"))
    connect_timeout: float = field(default_factory=lambda: float(os.environ.get("HW_CONNECT_TIMEOUT", "30")))
    snapshot_every: int = field(default_factory=lambda: int(os.environ.get("HW_SNAPSHOT_EVERY", "10000")))
    snapshot_interval: float = field(
        default_factory=lambda: float(os.environ.get("HW_SNAPSHOT_INTERVAL", "5"))
    )
    ready_timeout: float = field(default_factory=lambda: float(os.environ.get("HW_READY_TIMEOUT", "600")))
    # Replay a projection in a helper process when it and another each have this many events to
    # go (see `catch_up`); 0: never. A helper costs about half a second to start.
    replay_helpers_from: int = field(
        default_factory=lambda: int(os.environ.get("HW_REPLAY_HELPERS_FROM", "100000"))
    )


class Runtime:
    """What a running service has at hand: connection, store, bus client, projectors."""

    def __init__(self, spec: ServiceSpec, nc: Any, settings: Settings) -> None:
        self.spec = spec
        self.name = spec.name
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings
        self.store = EventStore(nc)
        self.bus = CommandClient(nc)
        self.snapshots = SnapshotStore(self.js)
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.started = utcnow()
        self.stopping = asyncio.Event()
        self.accepting = False  # commands are subscribed and the server knows it
        self.log = observability.log()
        self.projectors: dict[str, Projector[Any]] = {
            r.projection.name: Projector(
                nc,
                r.stream,
                r.projection,
                subjects=r.subjects or None,
                snapshots=self.snapshots,
                snapshot_every=settings.snapshot_every,
                snapshot_interval=settings.snapshot_interval,
            )
            for r in spec.replays
        }
        self._background: list[asyncio.Task[None]] = []

    def projector(self, name: str) -> Projector[Any]:
        return self.projectors[name]

    def background(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `loop` until the service stops; it should return once `stopping` is set."""
        self._background.append(asyncio.create_task(loop()))

    @property
    def ready(self) -> bool:
        """Caught up with the log and taking commands: what `hwctl up` waits for."""
        return self.accepting and all(p.ready for p in self.projectors.values())

    def health(self) -> Health:
        return Health(
            service=self.name,
            instance=self.instance,
            pid=os.getpid(),
            version=__version__,
            started=self.started,
            ready=self.ready,
            replay=[p.progress() for p in self.projectors.values()],
        )

    async def execute(
        self,
        projector: Projector[S],
        subject: str,
        command_id: str,
        decide: Callable[[S], Sequence[Event]],
        *,
        attempts: int = 5,
    ) -> int:
        """Decide on current state and append to one aggregate; return the stream sequence reached.

        A command already applied (a retry) returns where it landed without deciding again. On a
        concurrent change, wait until the projector has seen it and decide again. `decide` raises
        `UserError`s for bad requests; returning no events means there is nothing to do.
        """
        return await self.execute_across(
            projector, command_id, lambda state: {subject: decide(state)}, attempts=attempts
        )

    async def execute_across(
        self,
        projector: Projector[S],
        command_id: str,
        decide: Callable[[S], Mapping[str, Sequence[Event]]],
        *,
        attempts: int = 5,
    ) -> int:
        """`execute` for a decision touching several aggregates (subject -> events): all of it lands
        in one atomic batch, each aggregate checked against the version it was decided on."""
        subjects_tried: list[str] = []
        for _ in range(attempts):
            done = projector.seen(command_id)
            if done is not None:
                return done
            writes = {subject: list(events) for subject, events in decide(projector.state).items() if events}
            if not writes:
                return projector.applied
            subjects_tried = list(writes)
            appends = [Append(s, events, projector.version(s), command_id) for s, events in writes.items()]
            try:
                versions = await self.store.append_together(appends)
            except ConcurrencyConflict as conflict:
                latest = conflict.actual or await self.store.last_sequence(
                    projector.stream.name, subjects_tried
                )
                await projector.wait_for(latest)
                continue
            last = max(v.seq for v in versions)
            await projector.wait_for(last)
            return last
        raise ConcurrencyConflict(
            f"{', '.join(subjects_tried)} kept changing while this request was decided ({attempts} tries); "
            "try again",
            subject=", ".join(subjects_tried),
        )

    async def _background_done(self, timeout: float) -> None:
        if self._background:
            _, late = await asyncio.wait(self._background, timeout=timeout)
            for task in late:
                task.cancel()


GC_EVERY = 50_000  # allocations between young-generation collections (Python's default: 700)


async def connect(url: str, name: str, *, timeout: float = 30.0) -> Any:
    """Connect to NATS, retrying until `timeout`; afterwards reconnect forever."""
    log = observability.log()
    client: Any = None

    async def on_error(err: Exception) -> None:
        log.warning("nats_error", error=f"{type(err).__name__}: {err}")

    async def on_disconnected() -> None:
        if client is not None and not (client.is_closed or client.is_draining):  # not when we stop
            log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            client = await nats.connect(
                url,
                name=name,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
            return client
        except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as err:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            log.info("nats_not_reachable_yet", url=url, error=str(err))
            await asyncio.sleep(0.25)


async def serve(
    spec: ServiceSpec, settings: Settings | None = None, *, stop: asyncio.Event | None = None
) -> None:
    """Run the service until `stop` is set (by SIGTERM/SIGINT when run from `main`)."""
    settings = settings or Settings()
    stop = stop or asyncio.Event()
    log = observability.log()
    nc = await connect(settings.nats_url, f"headwater-{spec.name}", timeout=settings.connect_timeout)
    runtime = Runtime(spec, nc, settings)
    log.info("service_starting", nats=settings.nats_url, instance=runtime.instance)

    await streams.ensure_streams(runtime.js, tuple(spec.streams))

    async def answer_health(msg: Any) -> None:
        await msg.respond(encode_ok(runtime.health()))

    health_sub = await nc.subscribe(subjects.health_subject(spec.name), cb=answer_health)

    server: CommandServer | None = None
    caught_up = await catch_up(
        list(runtime.projectors.values()),
        service=spec.name,
        nats_url=settings.nats_url,
        helpers_from=settings.replay_helpers_from,
        timeout=settings.ready_timeout,
        stop=stop,
    )
    if caught_up:
        server = CommandServer(nc, spec.name, spec.setup(runtime))
        await server.start()
        await nc.flush()  # the server has our subscription before health says ready
        runtime.accepting = True
        log.info("service_ready", replay=[p.progress().applied for p in runtime.projectors.values()])
        await stop.wait()

    log.info("service_stopping")
    runtime.accepting = False
    runtime.stopping.set()
    for projector in runtime.projectors.values():
        projector.release_waiters()  # a long wait (wait commit) must not hold up the stop
    if server is not None:
        await server.stop()
    await runtime._background_done(timeout=10)
    for projector in runtime.projectors.values():
        await projector.stop(snapshot=True)
    await health_sub.unsubscribe()
    await nc.drain()
    log.info("service_stopped")


def main(spec: ServiceSpec) -> None:
    """Process entry point: configure logging and tracing, serve until SIGTERM/SIGINT, exit 0."""
    observability.configure(spec.name)
    # A service holds a large state of small objects and makes many more while it replays or
    # plans a job; the default collector scans the whole heap every few thousand of them (a third
    # of the time planning 100,000 datums went to it). Fold cycles less often.
    gc.set_threshold(GC_EVERY, 20, 100)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(spec, stop=stop)

    try:
        asyncio.run(run())
    except Exception:
        observability.log().exception("service_crashed")
        observability.shutdown()
        sys.exit(1)
    observability.shutdown()
