"""Projections against a real nats-server: replay, live follow, unknown events, snapshots."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgspec
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw_events import streams
from hw_events.errors import ServiceUnavailable
from hw_events.messages import Envelope, Version, utcnow
from hw_events.projection import Projection, Projector
from hw_events.snapshots import SnapshotStore
from hw_events.store import Append, EventStore
from hw_events.streams import StreamKind, StreamSpec
from tests.helpers import BALANCES, Balances, Deposited, Renamed, Withdrawn, evolve
from tests.infra import NatsServer


def subject(stream: StreamSpec, aggregate: str) -> str:
    return stream.subjects[0].replace(">", aggregate)


async def caught_up(projector: Projector[Any]) -> Projector[Any]:
    """Start `projector`; return it once it has read the stream to its end."""
    await projector.start()
    await projector.wait_ready(5)
    return projector


async def append_each(store: EventStore, stream: StreamSpec, events: list[Any]) -> None:
    for event in events:
        await store.append(subject(stream, event.account), [event], expected=None)


async def test_replays_then_follows_live(nc: Any, event_stream: StreamSpec) -> None:
    store = EventStore(nc)
    await append_each(
        store, event_stream, [Deposited(account="a", amount=5), Withdrawn(account="a", amount=2)]
    )
    projector = await caught_up(Projector(nc, event_stream, BALANCES))
    assert projector.state.accounts == {"a": 3}

    version = await store.append(
        subject(event_stream, "b"), [Deposited(account="b", amount=7)], expected=None
    )
    await projector.wait_for(version.seq)
    assert projector.state.accounts == {"a": 3, "b": 7}
    assert projector.version(subject(event_stream, "b")) == Version(version.seq, 1)
    assert projector.progress().ready
    assert projector.progress().applied == version.seq
    await projector.stop(snapshot=False)


async def test_an_empty_stream_is_ready_at_once(nc: Any, event_stream: StreamSpec) -> None:
    projector = Projector(nc, event_stream, BALANCES)
    await projector.start()
    await projector.wait_ready(2)
    assert projector.state.accounts == {}
    await projector.stop(snapshot=False)


async def test_events_of_a_type_it_does_not_know_are_skipped(nc: Any, event_stream: StreamSpec) -> None:
    """A projector built before `Renamed` existed reads a log that has it, and carries on."""
    store = EventStore(nc)
    await append_each(
        store,
        event_stream,
        [
            Deposited(account="a", amount=5),
            Renamed(account="a", name="Alice"),
            Deposited(account="a", amount=1),
        ],
    )
    projector = await caught_up(Projector(nc, event_stream, BALANCES))
    assert projector.state.accounts == {"a": 6}
    assert projector.skipped == 1
    # The skipped event still counts: a conditional append expects the aggregate as the log has it.
    assert projector.version(subject(event_stream, "a")).count == 3
    version = await store.append(
        subject(event_stream, "a"),
        [Deposited(account="a", amount=1)],
        expected=projector.version(subject(event_stream, "a")),
    )
    assert version.count == 4
    await projector.stop(snapshot=False)


async def test_malformed_messages_are_skipped_and_the_rest_applied(nc: Any, event_stream: StreamSpec) -> None:
    js = nc.jetstream()
    store = EventStore(nc)
    await append_each(store, event_stream, [Deposited(account="a", amount=1)])
    await js.publish(subject(event_stream, "a"), b"this is not json")
    await js.publish(subject(event_stream, "a"), b'{"event": {"type": "test_deposited", "amount": "lots"}}')
    await append_each(store, event_stream, [Deposited(account="a", amount=2)])
    projector = await caught_up(Projector(nc, event_stream, BALANCES))
    assert projector.state.accounts == {"a": 3}
    assert projector.skipped == 2
    await projector.stop(snapshot=False)


class _Deposit(msgspec.Struct):
    amount: int


class _StoredDeposit(msgspec.Struct):
    event: _Deposit


async def test_a_replay_folds_by_header_what_is_older_than_the_commands_it_remembers(
    nc: Any, event_stream: StreamSpec
) -> None:
    """Deposits are folded from their `Hw-Event` header and body, undecoded by the projector, except
    the newest (whose commands it must remember), a message written without the header, and what
    comes live. The state is the same as a replay that decodes every message."""
    folded: list[str] = []

    def deposit_by_header(state: Balances, about: str, body: bytes) -> Balances:
        folded.append(about)
        amount = msgspec.json.decode(body, type=_StoredDeposit).event.amount
        return evolve(state, Deposited(account=about, amount=amount))

    by_header = dataclasses.replace(BALANCES, header_folds={"test_deposited": deposit_by_header})
    store = EventStore(nc)
    for n in range(1, 9):
        event = Deposited(account="a" if n % 2 else "b", amount=n)
        await store.append(subject(event_stream, event.account), [event], expected=None, command_id=f"c{n}")
    await store.append(subject(event_stream, "a"), [Withdrawn(account="a", amount=1)], expected=None)
    # As a version before the header wrote it: decoded, whatever the type.
    old = Envelope(id="o", aggregate="a", version=0, time=utcnow(), event=Deposited(account="a", amount=100))
    await nc.jetstream().publish(subject(event_stream, "a"), msgspec.json.encode(old))
    for n in range(9, 12):
        event = Deposited(account="c", amount=n)
        await store.append(subject(event_stream, "c"), [event], expected=None, command_id=f"c{n}")

    projector = await caught_up(Projector(nc, event_stream, by_header, remember_commands=3))
    assert folded == ["a", "b", "a", "b", "a", "b", "a", "b"]  # the first eight: none of the last three
    assert [projector.seen(f"c{n}") is not None for n in (8, 9, 10, 11)] == [False, True, True, True]
    decoding = await caught_up(Projector(nc, event_stream, BALANCES))
    assert projector.state.accounts == decoding.state.accounts == {"a": 115, "b": 20, "c": 30}
    assert projector.state.applied == decoding.state.applied == 13
    assert projector.positions == decoding.positions
    live = await store.append(subject(event_stream, "d"), [Deposited(account="d", amount=1)], expected=None)
    await projector.wait_for(live.seq)
    assert (projector.state.accounts["d"], len(folded)) == (1, 8)  # live: decoded
    for p in (projector, decoding):
        await p.stop(snapshot=False)


async def test_a_projection_cannot_fold_by_header_a_type_it_does_not_read(
    nc: Any, event_stream: StreamSpec
) -> None:
    stray = dataclasses.replace(
        BALANCES, event_types=(Withdrawn,), header_folds={"test_deposited": lambda state, about, body: state}
    )
    with pytest.raises(TypeError, match=r"\['test_deposited'\] by header, not among its event types"):
        Projector(nc, event_stream, stray)


async def test_restart_from_a_snapshot_reads_only_the_tail(
    nc: Any, event_stream: StreamSpec, unique: str
) -> None:
    store = EventStore(nc)
    snapshots = SnapshotStore(nc.jetstream(), bucket=f"snap_{unique}", objects=f"obj_{unique}")
    await append_each(store, event_stream, [Deposited(account=f"a{i % 3}", amount=i) for i in range(30)])

    first = await caught_up(Projector(nc, event_stream, BALANCES, snapshots=snapshots, snapshot_every=10))
    await first.stop()  # saves a snapshot at 30

    await append_each(store, event_stream, [Deposited(account="a0", amount=100)])
    second = await caught_up(Projector(nc, event_stream, BALANCES, snapshots=snapshots))
    assert second.read == 1
    assert second.state.accounts == {"a0": 235, "a1": 145, "a2": 155}
    await second.stop(snapshot=False)


async def test_a_snapshot_of_another_schema_is_ignored(
    nc: Any, event_stream: StreamSpec, unique: str
) -> None:
    store = EventStore(nc)
    snapshots = SnapshotStore(nc.jetstream(), bucket=f"snap_{unique}", objects=f"obj_{unique}")
    await append_each(store, event_stream, [Deposited(account="a", amount=4)])
    old = await caught_up(Projector(nc, event_stream, BALANCES, snapshots=snapshots))
    await old.stop()

    changed = Projection(**{**BALANCES.__dict__, "schema": "balances-2"})
    new = await caught_up(Projector(nc, event_stream, changed, snapshots=snapshots))
    assert new.read == 1  # replayed from the beginning
    assert new.state.accounts == {"a": 4}
    await new.stop(snapshot=False)


async def test_a_snapshot_ahead_of_a_recreated_stream_is_ignored(nc: Any, unique: str) -> None:
    spec = StreamSpec(f"R_{unique}", (f"r{unique}.>",), StreamKind.EVENTS)
    js = nc.jetstream()
    store = EventStore(nc)
    snapshots = SnapshotStore(js, bucket=f"snap_{unique}", objects=f"obj_{unique}")
    await streams.ensure_stream(js, spec)
    await append_each(store, spec, [Deposited(account="a", amount=1) for _ in range(5)])
    before = await caught_up(Projector(nc, spec, BALANCES, snapshots=snapshots))
    await before.stop()

    await js.delete_stream(spec.name)
    await streams.ensure_stream(js, spec)
    await append_each(store, spec, [Deposited(account="b", amount=2)])
    after = await caught_up(Projector(nc, spec, BALANCES, snapshots=snapshots))
    assert after.state.accounts == {"b": 2}
    await after.stop(snapshot=False)


async def test_a_snapshot_bigger_than_a_message_goes_to_the_object_store(
    nc: Any, event_stream: StreamSpec, unique: str
) -> None:
    store = EventStore(nc)
    snapshots = SnapshotStore(nc.jetstream(), bucket=f"snap_{unique}", objects=f"obj_{unique}")
    snapshots.max_inline = 64  # force the large-state path
    await append_each(store, event_stream, [Deposited(account=f"acct{i}", amount=i) for i in range(50)])
    first = await caught_up(Projector(nc, event_stream, BALANCES, snapshots=snapshots))
    await first.stop()

    second = await caught_up(Projector(nc, event_stream, BALANCES, snapshots=snapshots))
    assert second.read == 0
    assert second.state.accounts == first.state.accounts
    await second.stop(snapshot=False)


async def test_a_big_snapshot_is_stored_compressed_and_read_back_whole(nc: Any, unique: str) -> None:
    snapshots = SnapshotStore(nc.jetstream(), bucket=f"snap_{unique}", objects=f"obj_{unique}")
    snapshots.max_inline = 64 * 1024  # compressed, it still goes to the object store, in chunks
    state = b"".join(f"account {i:06} holds {i * 7}\n".encode() for i in range(60_000))  # ~1.7 MB
    await snapshots.save("big", state)
    stored = await snapshots._load_stored("big")
    assert stored is not None
    assert 64 * 1024 < len(stored) < len(state) / 3  # compressed
    assert await snapshots.load("big") == state
    await snapshots.save("small", b"tiny")
    assert await snapshots._load_stored("small") == b"tiny" == await snapshots.load("small")


async def test_waiting_for_a_sequence_that_never_comes_says_so(nc: Any, event_stream: StreamSpec) -> None:
    projector = Projector(nc, event_stream, BALANCES)
    await projector.start()
    await projector.wait_ready(2)
    with pytest.raises(ServiceUnavailable, match="has not seen sequence 999"):
        await projector.wait_for(999, timeout=0.2)
    await projector.stop(snapshot=False)


# --- property: snapshot + tail == replay from the start ---------------------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["deposit", "withdraw"]), st.sampled_from(["a", "b", "c"]), st.integers(1, 100)
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, cut=st.floats(0, 1), every=st.integers(1, 15))
def test_snapshot_plus_tail_equals_replay_from_start(
    nats_server: NatsServer, ops: list[tuple[str, str, int]], cut: float, every: int
) -> None:
    asyncio.run(_snapshot_vs_full(nats_server.url, ops, int(cut * len(ops)), every))


async def _snapshot_vs_full(url: str, ops: list[tuple[str, str, int]], cut: int, every: int) -> None:
    import uuid

    token = uuid.uuid4().hex[:10]
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        spec = StreamSpec(f"P_{token}", (f"p{token}.>",), StreamKind.EVENTS)
        await streams.ensure_stream(js, spec)
        snapshots = SnapshotStore(js, bucket=f"snap_{token}", objects=f"obj_{token}")
        store = EventStore(nc)
        events = [
            (Deposited if kind == "deposit" else Withdrawn)(account=acct, amount=n) for kind, acct, n in ops
        ]

        await store.append_many([Append(subject(spec, e.account), [e], None) for e in events[:cut]])
        writer = await caught_up(Projector(nc, spec, BALANCES, snapshots=snapshots, snapshot_every=every))
        await writer.stop()
        for event in events[cut:]:
            await store.append(subject(spec, event.account), [event], expected=None)

        from_snapshot = Projector(nc, spec, BALANCES, snapshots=snapshots)
        from_start = Projector(nc, spec, BALANCES)
        for p in (from_snapshot, from_start):
            await caught_up(p)
            await p.stop(snapshot=False)
        assert msgspec.to_builtins(from_snapshot.state) == msgspec.to_builtins(from_start.state)
        assert from_snapshot.positions == from_start.positions
        assert from_snapshot.applied == from_start.applied
        assert from_snapshot.read == len(events) - cut
    finally:
        await nc.close()


async def test_a_snapshot_built_from_other_event_types_is_ignored(
    nc: Any, event_stream: StreamSpec, unique: str
) -> None:
    """A newer version that applies `Renamed` must not start from a state that skipped it."""
    store = EventStore(nc)
    snapshots = SnapshotStore(nc.jetstream(), bucket=f"snap_{unique}", objects=f"obj_{unique}")
    await append_each(store, event_stream, [Deposited(account="a", amount=1), Renamed(account="a", name="A")])
    old = await caught_up(Projector(nc, event_stream, BALANCES, snapshots=snapshots))
    await old.stop()

    def evolve_newer(state: Balances, event: Any) -> Balances:
        if isinstance(event, Renamed):
            state.accounts[event.name] = state.accounts.pop(event.account)
            state.applied += 1
            return state
        return evolve(state, event)

    newer = Projection(
        **{**BALANCES.__dict__, "evolve": evolve_newer, "event_types": (Deposited, Withdrawn, Renamed)}
    )
    projector = await caught_up(Projector(nc, event_stream, newer, snapshots=snapshots))
    assert projector.read == 2
    assert projector.state.accounts == {"A": 1}
    await projector.stop(snapshot=False)
