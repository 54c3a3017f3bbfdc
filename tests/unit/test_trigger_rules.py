"""When a trigger fires, decided from the file store's events (as the triggers service folds them)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest

from hw_events.fs import (
    AUTO,
    BY_HAND,
    BY_TRIGGER,
    BranchCreated,
    BranchHeadMoved,
    BranchTriggerSet,
    CommitFinished,
    CommitStarted,
    RepoCreated,
    Trigger,
)
from hw_events.messages import Event
from hw_triggers import domain
from hw_triggers.domain import Move, TriggersState
from tests.unit.fs_events import T0, at, cid, one_off


def given(*events: Event | Iterable[Event]) -> TriggersState:
    return fold(TriggersState(), *events)


def fold(state: TriggersState, *events: Event | Iterable[Event]) -> TriggersState:
    for item in events:
        for event in [item] if isinstance(item, Event) else item:
            domain.evolve(state, event)  # type: ignore[arg-type]
    return state


def new_branch(name: str, n: int, trigger: Trigger | None = None) -> list[Event]:
    """`create branch data@<name>`: an empty finished AUTO commit, with a trigger if given."""
    return [
        CommitStarted(repo="data", commit=cid(n), branch=name, origin=AUTO, started=at(n)),
        CommitFinished(repo="data", commit=cid(n), finished=at(n), size_bytes=0, files=0, layers=[]),
        BranchCreated(repo="data", branch=name, head=cid(n), created=at(n), trigger=trigger),
    ]


def fired(state: TriggersState, move: Move, n: int) -> BranchHeadMoved:
    """The event fs writes when it carries out `move`."""
    return BranchHeadMoved(
        repo="data",
        branch=move.branch,
        head=move.head,
        previous=move.expected,
        reason=BY_TRIGGER,
        moved=at(n),
    )


def due(state: TriggersState, now: datetime | None = None) -> list[Move]:
    """What the service would fire (at `now`, by default much later) for news from commits."""
    return [
        move
        for repo, names in domain.due_on_commits(state, {}).items()
        for move in domain.plan(state.repos[repo], names, now or at(1000))
    ]


DATA = RepoCreated(repo="data", created=T0)


def staging_commits(sizes: list[int], first: int = 10) -> list[Event]:
    events: list[Event] = []
    for i, size in enumerate(sizes):
        n = first + i
        events += one_off("data", "staging", n, n - 1 if i else None, size=size)
    return events


def test_size_accumulates_over_commits_until_the_threshold() -> None:
    state = given(DATA, new_branch("master", 1, Trigger(branch="staging", size="1KB")))
    fold(state, staging_commits([400]))
    assert due(state) == []
    fold(state, one_off("data", "staging", 11, 10, size=800))
    assert due(state) == []
    fold(state, one_off("data", "staging", 12, 11, size=1100))
    [move] = due(state)
    assert move == Move("master", cid(12), cid(1))
    fold(state, fired(state, move, 13))
    assert due(state) == []  # consumed
    fold(state, one_off("data", "staging", 14, 12, size=2000))
    assert due(state) == []  # 900 B more than master's head now has
    fold(state, one_off("data", "staging", 15, 14, size=2100))
    assert [m.head for m in due(state)] == [cid(15)]


def test_a_shrinking_source_never_fires_on_size() -> None:
    state = given(
        DATA, staging_commits([5000]), new_branch("master", 20, Trigger(branch="staging", size="1KB"))
    )
    fold(state, BranchHeadMoved(repo="data", branch="master", head=cid(10), reason=BY_HAND, moved=at(21)))
    fold(state, one_off("data", "staging", 22, 10, size=100))
    assert due(state) == []


def test_every_second_commit_fires_with_commits_2() -> None:
    state = given(DATA, new_branch("master", 1, Trigger(branch="staging", commits=2)))
    heads = []
    parent = None
    for n in range(10, 16):
        fold(state, one_off("data", "staging", n, parent))
        parent = n
        for move in due(state):
            heads.append(move.head)
            fold(state, fired(state, move, n))
    assert heads == [cid(11), cid(13), cid(15)]


def test_the_empty_root_of_a_new_source_branch_is_not_counted() -> None:
    state = given(
        DATA, new_branch("staging", 1), new_branch("master", 2, Trigger(branch="staging", commits=2))
    )
    fold(state, one_off("data", "staging", 10, 1))
    assert due(state) == []  # one commit, not two: the AUTO root does not count
    fold(state, one_off("data", "staging", 11, 10))
    assert [m.head for m in due(state)] == [cid(11)]


@pytest.mark.parametrize(("all_", "fires"), [(False, True), (True, False)])
def test_any_of_the_conditions_or_all_of_them(all_: bool, fires: bool) -> None:
    trigger = Trigger(branch="staging", size="1MB", commits=1, all=all_)
    state = given(DATA, new_branch("master", 1, trigger), staging_commits([10]))
    assert bool(due(state)) is fires  # one commit, but far from 1 MB


def test_all_conditions_met_fires_with_all() -> None:
    trigger = Trigger(branch="staging", size="1KB", commits=2, all=True)
    state = given(DATA, new_branch("master", 1, trigger), staging_commits([2000]))
    assert due(state) == []
    fold(state, one_off("data", "staging", 11, 10, size=2000))
    assert len(due(state)) == 1


def test_a_trigger_with_only_all_follows_every_commit() -> None:
    state = given(DATA, new_branch("master", 1, Trigger(branch="staging", all=True)), staging_commits([1]))
    assert len(due(state)) == 1


def test_a_chain_fires_in_one_pass() -> None:
    state = given(
        DATA,
        new_branch("b", 1, Trigger(branch="a", commits=1)),
        new_branch("c", 2, Trigger(branch="b", commits=1)),
        new_branch("d", 3, Trigger(branch="c", size="1GB")),  # the end of the chain does not hold
    )
    fold(state, one_off("data", "a", 10, None))
    assert due(state) == [Move("b", cid(10), cid(1)), Move("c", cid(10), cid(2))]


def test_moving_the_source_by_hand_is_no_news() -> None:
    state = given(
        DATA, staging_commits([10, 20]), new_branch("master", 20, Trigger(branch="staging", commits=1))
    )
    fold(state, BranchHeadMoved(repo="data", branch="staging", head=cid(10), reason=BY_HAND, moved=at(21)))
    assert due(state) == []


def test_moving_the_follower_by_hand_consumes_the_news() -> None:
    state = given(
        DATA, new_branch("master", 1, Trigger(branch="staging", commits=1)), staging_commits([10, 20])
    )
    assert due(state) != []
    fold(state, BranchHeadMoved(repo="data", branch="master", head=cid(10), reason=BY_HAND, moved=at(30)))
    assert due(state) == []


def test_setting_a_trigger_does_not_fire_it_the_next_commit_does() -> None:
    state = given(DATA, new_branch("master", 1), staging_commits([5_000_000]))
    trigger = Trigger(branch="staging", size="1MB")
    fold(state, BranchTriggerSet(repo="data", branch="master", trigger=trigger, set_at=at(20)))
    assert due(state) == []
    fold(state, one_off("data", "staging", 21, 10, size=5_000_001))
    assert [m.head for m in due(state)] == [cid(21)]


def test_a_trigger_may_wait_for_a_branch_that_does_not_exist_yet() -> None:
    state = given(DATA, new_branch("master", 1, Trigger(branch="staging", commits=1)))
    assert due(state) == []
    fold(state, staging_commits([1]))  # the first put creates staging
    assert [m.head for m in due(state)] == [cid(10)]


def test_an_open_commit_at_the_source_is_not_moved_to() -> None:
    state = given(DATA, new_branch("master", 1, Trigger(branch="staging", cron="@every 1m")))
    fold(
        state,
        CommitStarted(repo="data", commit=cid(10), branch="staging", started=at(10)),
        BranchCreated(repo="data", branch="staging", head=cid(10), created=at(10), reason="commit"),
    )
    assert domain.plan(state.repos["data"], ["master"], at(100)) == []
    fold(
        state, CommitFinished(repo="data", commit=cid(10), finished=at(11), size_bytes=3, files=1, layers=[])
    )
    assert [m.head for m in due(state)] == [cid(10)]  # finishing it is the news


def test_cron_ticks_count_from_the_last_move_and_need_new_data() -> None:
    trigger = Trigger(branch="staging", cron="@every 10m")
    state = given(DATA, new_branch("master", 1, trigger))
    never_ticked: dict[tuple[str, str], datetime] = {}
    assert domain.next_tick(state, never_ticked) == at(11)
    assert domain.due_on_ticks(state, never_ticked, at(10)) == {}
    assert domain.due_on_ticks(state, never_ticked, at(11)) == {"data": ["master"]}
    assert domain.plan(state.repos["data"], ["master"], at(11)) == []  # no data: no move, no empty job
    fold(state, staging_commits([1], first=12))
    [move] = due(state, at(12))  # a tick has passed since master moved
    assert move == Move("master", cid(12), cid(1))
    fold(state, fired(state, move, 13))
    fold(state, one_off("data", "staging", 14, 12))
    assert due(state, at(14)) == []  # ... but none since the fire at minute 13, until minute 23
    assert domain.next_tick(state, never_ticked) == at(23)
    assert domain.plan(state.repos["data"], ["master"], at(23)) == [Move("master", cid(14), cid(12))]


def test_a_tick_judged_is_not_judged_again_until_the_next() -> None:
    state = given(DATA, new_branch("master", 1, Trigger(branch="staging", cron="@every 10m")))
    ticked = {("data", "master"): at(11) + timedelta(seconds=1)}
    assert domain.due_on_ticks(state, ticked, at(15)) == {}
    assert domain.next_tick(state, ticked) == at(21) + timedelta(seconds=1)


def test_the_state_is_the_same_from_a_snapshot() -> None:
    import msgspec

    state = given(
        DATA, new_branch("master", 1, Trigger(branch="staging", commits=2)), staging_commits([1, 2, 3])
    )
    restored = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=TriggersState)
    assert restored == state
    assert due(restored) == due(state)


def test_a_spec_that_cannot_be_read_stops_no_other_trigger() -> None:
    # fs refuses these now; a log may hold one accepted under older rules.
    state = given(
        DATA,
        new_branch("odd", 1, Trigger(branch="staging", cron="@every 1ns", size="1 elephant")),
        new_branch("master", 2, Trigger(branch="staging", commits=1, cron="@every 1m")),
        staging_commits([1]),
    )
    ticked: dict[tuple[str, str], datetime] = {}
    assert domain.due_on_ticks(state, ticked, at(100)) == {"data": ["master"]}
    assert domain.next_tick(state, ticked) == at(3)
    assert due(state) == [Move("master", cid(10), cid(2))]
