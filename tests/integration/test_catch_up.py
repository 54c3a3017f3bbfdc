"""A service's projections caught up at start with replay helper processes, against a real
nats-server: the state a helper hands over is the state replayed here, a helper that fails costs
only time, and no helper outlives a stop or its service."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import pytest

import hw_events.catch_up as catch_up_module
from hw_events import snapshots, streams
from hw_events.catch_up import _ended, catch_up
from hw_events.projection import Projection, Projector
from hw_events.snapshots import SnapshotStore
from hw_events.store import EventStore
from hw_events.streams import StreamKind, StreamSpec
from tests.helpers import BALANCES, SLOW_BALANCES, Balances, Deposited, Withdrawn, evolve
from tests.infra import NatsServer

HELPER = "hw_events.replay_helper"


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Helpers are for a service with a core to spare: say there is one, on any machine."""
    monkeypatch.setattr(catch_up_module, "cores", lambda: 2)


@pytest.fixture
async def two_streams(nc: Any, unique: str) -> tuple[StreamSpec, StreamSpec]:
    specs = (
        StreamSpec(f"TA_{unique}", (f"ta{unique}.>",), StreamKind.EVENTS),
        StreamSpec(f"TB_{unique}", (f"tb{unique}.>",), StreamKind.EVENTS),
    )
    for spec in specs:
        await streams.ensure_stream(nc.jetstream(), spec)
    return specs


async def fill(nc: Any, stream: StreamSpec, n: int, tag: str) -> None:
    """`n` events over 5 accounts, each caused by command `<tag>-<i>`."""
    store = EventStore(nc)
    for i in range(n):
        account = f"{tag}{i % 5}"
        event = Deposited(account=account, amount=i) if i % 3 else Withdrawn(account=account, amount=1)
        await store.append(
            stream.subjects[0].replace(">", account), [event], expected=None, command_id=f"{tag}-{i}"
        )


def build(
    nc: Any,
    specs: tuple[StreamSpec, StreamSpec],
    b: Projection[Any] = BALANCES,
    *,
    a: Projection[Any] = BALANCES,
    store: SnapshotStore | None = None,
) -> list[Projector[Any]]:
    return [Projector(nc, specs[0], a), Projector(nc, specs[1], b, snapshots=store)]


async def caught_up(
    running: list[Projector[Any]], url: str, helpers_from: int, stop: asyncio.Event | None = None
) -> bool:
    return await catch_up(
        running,
        service="test",
        nats_url=url,
        helpers_from=helpers_from,
        timeout=60,
        stop=stop or asyncio.Event(),
    )


def helpers_of(parent: int) -> list[int]:
    """The replay helpers `parent` runs now."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and HELPER.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def eventually_true(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        await asyncio.sleep(0.02)
    return found


async def eventually_async(check: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        await asyncio.sleep(0.02)
    return found


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


async def test_a_helper_replays_the_shorter_projection_and_hands_over_what_a_replay_here_builds(
    nc: Any, nats_server: NatsServer, two_streams: tuple[StreamSpec, StreamSpec], unique: str
) -> None:
    await fill(nc, two_streams[0], 60, "a")
    await fill(nc, two_streams[1], 40, "b")
    here = build(nc, two_streams)
    assert await caught_up(here, nats_server.url, helpers_from=0)

    store = SnapshotStore(nc.jetstream(), bucket=f"snap_{unique}", objects=f"obj_{unique}")
    helped = build(nc, two_streams, store=store)
    assert await caught_up(helped, nats_server.url, helpers_from=1)

    assert [p.read for p in helped] == [60, 0]  # the second was read by the helper, not here
    for mine, theirs in zip(helped, here, strict=True):
        assert mine.state == theirs.state
        assert mine.positions == theirs.positions
        assert mine.applied == theirs.applied
    assert helped[1].seen("b-39") is not None  # a retried command is still answered, not redone
    assert helped[1].ready

    await fill(nc, two_streams[1], 1, "late")  # followed live from where the helper left off
    await helped[1].wait_for(await EventStore(nc).last_sequence(two_streams[1].name, two_streams[1].subjects))
    assert helped[1].state.accounts["late0"] == -1

    # What the helper read is in no snapshot yet: the next event saves one (not the 10,000th).
    saved = await eventually_async(lambda: store.load(helped[1].snapshot_key), "a snapshot saved")
    assert snapshots.decode(saved).seq == 41
    for projector in helped + here:
        await projector.stop(snapshot=False)
    restarted = Projector(nc, two_streams[1], BALANCES, snapshots=store)
    await restarted.start()
    await restarted.wait_ready(5)
    assert (restarted.read, restarted.state) == (0, helped[1].state)
    await restarted.stop(snapshot=False)


def _evolve_nowhere_else(state: Balances, event: Any) -> Balances:
    return evolve(state, event)


async def _no_process(*args: Any, **kwargs: Any) -> Any:
    raise BlockingIOError(11, "Resource temporarily unavailable")  # as fork says at pids.max


@pytest.mark.parametrize("why", ["not importable in the helper", "not picklable", "not started"])
async def test_a_helper_that_fails_costs_only_time(
    nc: Any,
    nats_server: NatsServer,
    two_streams: tuple[StreamSpec, StreamSpec],
    monkeypatch: pytest.MonkeyPatch,
    why: str,
) -> None:
    await fill(nc, two_streams[0], 30, "a")
    await fill(nc, two_streams[1], 20, "b")
    b = dataclasses.replace(BALANCES, name="b")
    if why == "not picklable":

        def evolve_b(state: Balances, event: Any) -> Balances:  # made at run time: no reference
            return evolve(state, event)

        b = dataclasses.replace(b, evolve=evolve_b)
    elif why == "not importable in the helper":  # its module is only in this process: exit 1
        module = types.ModuleType("hw_test_only_in_this_process")
        monkeypatch.setattr(_evolve_nowhere_else, "__module__", module.__name__)
        monkeypatch.setattr(module, "_evolve_nowhere_else", _evolve_nowhere_else, raising=False)
        monkeypatch.setitem(sys.modules, module.__name__, module)
        b = dataclasses.replace(b, evolve=_evolve_nowhere_else)
    else:
        monkeypatch.setattr(asyncio, "create_subprocess_exec", _no_process)
    running = build(nc, two_streams, b)
    assert await caught_up(running, nats_server.url, helpers_from=1)
    assert [p.read for p in running] == [30, 20]  # replayed here after all
    expected = build(nc, two_streams)
    assert await caught_up(expected, nats_server.url, helpers_from=0)

    await fill(nc, two_streams[1], 1, "late")  # and followed live once, as without a helper
    last = await EventStore(nc).last_sequence(two_streams[1].name, two_streams[1].subjects)
    for projector in (running[1], expected[1]):
        await projector.wait_for(last)
    await asyncio.sleep(0.2)  # (time for a second reading of it to show)
    assert running[1].read == 21
    assert [(p.state, p.positions) for p in running] == [(p.state, p.positions) for p in expected]
    for projector in running + expected:
        await projector.stop(snapshot=False)


ANSWERING = """
import sys, time
for _ in range(40):
    sys.stdout.buffer.write(b"x" * 250_000)
    sys.stdout.flush()
    time.sleep(0.05)
time.sleep(60)
"""


async def test_a_helper_killed_while_it_answers_is_reaped() -> None:
    """Its answer half read when the service stops: the pipe pauses with more than 128 KiB
    unread, and a process waited for with its pipe paused would never be done with."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ANSWERING, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.close()
    reading = asyncio.create_task(proc.stdout.read())
    await asyncio.sleep(0.3)
    reading.cancel()
    await asyncio.sleep(0.3)  # (the transport reads on until it pauses)
    async with asyncio.timeout(10):
        await _ended(proc)
    assert proc.returncode == -signal.SIGKILL


async def test_a_stop_during_catch_up_kills_the_helper(
    nc: Any, nats_server: NatsServer, two_streams: tuple[StreamSpec, StreamSpec]
) -> None:
    await fill(nc, two_streams[0], 1200, "a")
    await fill(nc, two_streams[1], 1000, "b")  # the helper's, at 5 ms an event: 5 s
    stop = asyncio.Event()
    # (A slow replay here would hold the event loop: messages already delivered are folded
    # without a pause, so the test could not look for the helper.)
    running = build(nc, two_streams, SLOW_BALANCES)
    catching_up = asyncio.create_task(caught_up(running, nats_server.url, helpers_from=1, stop=stop))
    (helper,) = await eventually_true(lambda: helpers_of(os.getpid()), "a helper running")
    progress = running[1].progress()  # what health (`hwctl status`) says meanwhile
    assert (progress.ready, progress.applied, progress.pending) == (False, 0, 1000)
    stop.set()
    async with asyncio.timeout(3):  # not once the helper is done
        assert await catching_up is False
    assert gone(helper)
    for projector in running:
        await projector.stop(snapshot=False)


CATCHING_UP = """
    import asyncio, sys
    import hw_events.catch_up
    from hw_events.catch_up import catch_up
    from hw_events.projection import Projector
    from hw_events.streams import StreamKind, StreamSpec
    from tests.helpers import BALANCES, SLOW_BALANCES
    import nats

    hw_events.catch_up.cores = lambda: 2  # (a core to spare, on any machine)

    async def main():
        nc = await nats.connect(sys.argv[1])
        specs = [StreamSpec(name, (subject,), StreamKind.EVENTS) for name, subject in
                 [(sys.argv[2], sys.argv[3]), (sys.argv[4], sys.argv[5])]]
        running = [Projector(nc, specs[0], BALANCES), Projector(nc, specs[1], SLOW_BALANCES)]
        await catch_up(running, service="test", nats_url=sys.argv[1], helpers_from=1, timeout=60,
                       stop=asyncio.Event())
        await asyncio.sleep(60)

    asyncio.run(main())
"""


async def test_a_helper_dies_with_the_service_that_started_it(
    nc: Any, nats_server: NatsServer, two_streams: tuple[StreamSpec, StreamSpec]
) -> None:
    await fill(nc, two_streams[0], 1200, "a")
    await fill(nc, two_streams[1], 1000, "b")  # the helper's: 5 s, unless it dies with the service
    args = [nats_server.url]
    for spec in two_streams:
        args += [spec.name, spec.subjects[0]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "HW_LOG_LEVEL": "info"}
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(CATCHING_UP), *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert service.stderr is not None
        async with asyncio.timeout(20):  # it says so after asking to die with its parent
            while b"replay_helper_replaying" not in await service.stderr.readline():
                pass
        (helper,) = helpers_of(service.pid)
        service.send_signal(signal.SIGKILL)
        # (not `service.wait()`: it returns once the pipes close, and the helper holds stderr's)
        await eventually_true(lambda: gone(helper), "the helper gone", timeout=3)
    finally:
        if service.returncode is None:
            service.kill()
            await service.wait()


async def test_a_stop_before_the_catch_up_starts_no_helper(
    nc: Any, nats_server: NatsServer, two_streams: tuple[StreamSpec, StreamSpec]
) -> None:
    await fill(nc, two_streams[0], 30, "a")
    await fill(nc, two_streams[1], 20, "b")
    stop = asyncio.Event()
    stop.set()
    running = build(nc, two_streams)
    assert await caught_up(running, nats_server.url, helpers_from=1, stop=stop) is False
    assert helpers_of(os.getpid()) == []
    assert [p.ready for p in running] == [False, False]


async def test_a_state_that_does_not_fit_is_not_adopted(
    nc: Any, two_streams: tuple[StreamSpec, StreamSpec]
) -> None:
    await fill(nc, two_streams[1], 20, "b")
    source = Projector(nc, two_streams[1], BALANCES)
    await source.start()
    await source.wait_ready(5)
    await source.stop(snapshot=False)
    ahead = snapshots.decode(source.snapshot_bytes())
    ahead.seq = 1000  # past the stream's end: from another stream of that name
    for wrong in (b"not a snapshot", snapshots.encode(ahead)):
        projector = Projector(nc, two_streams[1], BALANCES)
        await projector.prepare()
        assert await projector.adopt(wrong) is False
        assert (projector.applied, projector.state, projector.positions) == (0, Balances(), {})
