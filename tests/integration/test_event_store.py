"""The event store against a real nats-server: conditional, idempotent, atomic appends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hw_events.errors import ConcurrencyConflict, UserError
from hw_events.messages import Version
from hw_events.store import Append, EventStore
from hw_events.streams import StreamSpec
from tests.helpers import Deposited, Renamed, Withdrawn


def subject(stream: StreamSpec, aggregate: str) -> str:
    return stream.subjects[0].replace(">", aggregate)


async def test_two_concurrent_appends_at_the_same_version_exactly_one_lands(
    nc: Any, event_stream: StreamSpec
) -> None:
    store = EventStore(nc)
    acct = subject(event_stream, "alice")
    v1 = await store.append(acct, [Deposited(account="alice", amount=10)], expected=Version.new())

    results = await asyncio.gather(
        store.append(acct, [Deposited(account="alice", amount=1)], expected=v1),
        store.append(acct, [Withdrawn(account="alice", amount=2)], expected=v1),
        return_exceptions=True,
    )

    landed = [r for r in results if isinstance(r, Version)]
    conflicts = [r for r in results if isinstance(r, ConcurrencyConflict)]
    assert len(landed) == 1, results
    assert len(conflicts) == 1, results
    assert conflicts[0].retryable
    assert conflicts[0].actual == landed[0].seq
    assert "changed while this request was being decided" in conflicts[0].message
    events = await store.read(event_stream.name, acct, Deposited | Withdrawn)
    assert [e.envelope.version for e in events] == [1, 2]


async def test_a_stored_event_of_a_type_naming_what_it_is_about_says_so_in_a_header(
    nc: Any, event_stream: StreamSpec
) -> None:
    """Every way of appending sets it, and only for such types (`Deposited` names its account)."""
    store = EventStore(nc)
    acct = subject(event_stream, "dora")
    await store.append(acct, [Deposited(account="dora", amount=1)], expected=None)
    await store.append(
        acct, [Withdrawn(account="dora", amount=1), Deposited(account="dora", amount=2)], expected=None
    )
    await store.append_many([Append(acct, [Deposited(account="dora", amount=3)], None)])
    js = nc.jetstream()
    last = (await js.stream_info(event_stream.name)).state.last_seq
    headers = [(await js.get_msg(event_stream.name, seq)).headers or {} for seq in range(last - 3, last + 1)]
    dora = "test_deposited dora"
    assert [h.get("Hw-Event") for h in headers] == [dora, None, dora, dora]


async def test_creating_an_aggregate_twice_conflicts(nc: Any, event_stream: StreamSpec) -> None:
    store = EventStore(nc)
    acct = subject(event_stream, "bob")
    await store.append(acct, [Deposited(account="bob", amount=1)], expected=Version.new())
    with pytest.raises(ConcurrencyConflict):
        await store.append(acct, [Deposited(account="bob", amount=1)], expected=Version.new())


async def test_the_same_command_appended_twice_lands_once(nc: Any, event_stream: StreamSpec) -> None:
    store = EventStore(nc)
    acct = subject(event_stream, "carol")
    event = Deposited(account="carol", amount=5)
    first = await store.append(acct, [event], expected=None, command_id="cmd-1")
    again = await store.append(acct, [event], expected=None, command_id="cmd-1")

    assert again.seq == first.seq  # deduplicated by Nats-Msg-Id: the original position comes back
    events = await store.read(event_stream.name, acct, Deposited)
    assert len(events) == 1
    assert events[0].envelope.command == "cmd-1"
    assert events[0].envelope.id == f"cmd-1:{acct}:1"


async def test_several_events_land_together_or_not_at_all(nc: Any, event_stream: StreamSpec) -> None:
    store = EventStore(nc)
    acct = subject(event_stream, "dave")
    v1 = await store.append(acct, [Deposited(account="dave", amount=100)], expected=Version.new())
    v2 = await store.append(
        acct, [Withdrawn(account="dave", amount=30), Deposited(account="dave", amount=5)], expected=v1
    )
    assert v2 == Version(v1.seq + 2, 3)

    with pytest.raises(ConcurrencyConflict):  # decided on v1, which is stale: nothing of it is stored
        await store.append(
            acct, [Withdrawn(account="dave", amount=1), Withdrawn(account="dave", amount=1)], expected=v1
        )

    events = await store.read(event_stream.name, acct, Deposited | Withdrawn)
    assert [(type(e.envelope.event).__name__, e.envelope.version) for e in events] == [
        ("Deposited", 1),
        ("Withdrawn", 2),
        ("Deposited", 3),
    ]
    assert await store.version(event_stream.name, acct) == v2


async def test_an_atomic_append_across_aggregates_checks_each(nc: Any, event_stream: StreamSpec) -> None:
    store = EventStore(nc)
    a, b = subject(event_stream, "from"), subject(event_stream, "to")
    va = await store.append(a, [Deposited(account="from", amount=50)], expected=Version.new())
    vb = await store.append(b, [Deposited(account="to", amount=0)], expected=Version.new())

    moved = await store.append_together(
        [
            Append(a, [Withdrawn(account="from", amount=20)], va),
            Append(b, [Deposited(account="to", amount=20)], vb),
        ]
    )
    assert [v.count for v in moved] == [2, 2]
    assert moved[1].seq == moved[0].seq + 1

    with pytest.raises(
        ConcurrencyConflict
    ) as stale:  # b is no longer at vb: the transfer must not half-happen
        await store.append_together(
            [
                Append(a, [Withdrawn(account="from", amount=5)], moved[0]),
                Append(b, [Deposited(account="to", amount=5)], vb),
            ]
        )
    assert a in stale.value.subject
    assert b in stale.value.subject
    assert await store.version(event_stream.name, a) == moved[0]
    assert await store.version(event_stream.name, b) == moved[1]


async def test_pipelined_appends_to_many_aggregates(nc: Any, event_stream: StreamSpec) -> None:
    store = EventStore(nc)
    appends = [
        Append(subject(event_stream, f"acct{i}"), [Deposited(account=f"acct{i}", amount=i)], Version.new())
        for i in range(200)
    ]
    versions = await store.append_many(appends)
    assert [v.count for v in versions] == [1] * 200
    assert len({v.seq for v in versions}) == 200

    # One of them stale, the rest fresh: the stale one is reported, the others still land.
    again = [Append(appends[0].subject, [Deposited(account="acct0", amount=1)], Version.new())]
    again += [
        Append(subject(event_stream, f"new{i}"), [Deposited(account="n", amount=1)], Version.new())
        for i in range(3)
    ]
    with pytest.raises(ConcurrencyConflict):
        await store.append_many(again)
    assert (await store.version(event_stream.name, subject(event_stream, "new2"))).count == 1


async def test_reading_an_aggregate_that_does_not_exist(nc: Any, event_stream: StreamSpec) -> None:
    store = EventStore(nc)
    assert await store.read(event_stream.name, subject(event_stream, "nobody"), Deposited) == []
    assert await store.version(event_stream.name, subject(event_stream, "nobody")) == Version.new()


async def test_one_command_may_write_several_aggregates(nc: Any, event_stream: StreamSpec) -> None:
    store = EventStore(nc)
    a, b = subject(event_stream, "one"), subject(event_stream, "two")
    await store.append(a, [Deposited(account="one", amount=1)], expected=Version.new(), command_id="cmd")
    await store.append(b, [Deposited(account="two", amount=2)], expected=Version.new(), command_id="cmd")
    together = await store.append_together(
        [
            Append(
                a, [Deposited(account="one", amount=3)], Version(*await _pos(store, event_stream, a)), "cmd2"
            ),
            Append(
                b, [Deposited(account="two", amount=4)], Version(*await _pos(store, event_stream, b)), "cmd2"
            ),
        ]
    )
    assert [v.count for v in together] == [2, 2]
    assert [e.envelope.event.amount for e in await store.read(event_stream.name, a, Deposited)] == [1, 3]
    assert [e.envelope.event.amount for e in await store.read(event_stream.name, b, Deposited)] == [2, 4]


async def _pos(store: EventStore, stream: StreamSpec, aggregate: str) -> tuple[int, int]:
    version = await store.version(stream.name, aggregate)
    return version.seq, version.count


async def test_a_retried_decision_of_several_events_is_a_retryable_conflict(
    nc: Any, event_stream: StreamSpec
) -> None:
    """Sent again after it landed (the reply was lost): nothing is stored twice, and the caller is told
    to re-read, not that Headwater has a bug."""
    store = EventStore(nc)
    acct = subject(event_stream, "again")
    events = [Deposited(account="again", amount=1), Deposited(account="again", amount=2)]
    await store.append(acct, events, expected=Version.new(), command_id="cmd-twice")
    with pytest.raises(ConcurrencyConflict):
        await store.append(acct, events, expected=Version.new(), command_id="cmd-twice")
    with pytest.raises(ConcurrencyConflict):
        await store.append(acct, events, expected=None, command_id="cmd-twice")
    assert len(await store.read(event_stream.name, acct, Deposited)) == 2


async def test_an_event_too_large_to_send_is_refused_and_nothing_leaks(
    nc: Any, event_stream: StreamSpec
) -> None:
    store = EventStore(nc, max_in_flight=2)
    huge = Renamed(account="big", name="x" * (nc.max_payload + 1))
    with pytest.raises(UserError, match="larger than NATS accepts in one message"):
        await store.append_many([Append(subject(event_stream, f"big{i}"), [huge], None) for i in range(3)])
    with pytest.raises(UserError, match="larger than NATS accepts"):
        await store.append(subject(event_stream, "big"), [huge], expected=None)
    small = [
        Append(subject(event_stream, f"ok{i}"), [Deposited(account="ok", amount=i)], None) for i in range(5)
    ]
    assert len(await asyncio.wait_for(store.append_many(small), 5)) == 5
