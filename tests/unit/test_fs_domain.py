"""The file store's decisions, as given events / when command / then events or error."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from hw_events.errors import AlreadyExists, NotFound, UserError
from hw_events.fs import (
    AUTO,
    BY_HAND,
    BY_TRIGGER,
    BY_UPSTREAM,
    USER,
    BranchCreated,
    BranchHeadMoved,
    BranchTriggerSet,
    CommitFinished,
    CommitStarted,
    CreateBranch,
    CreateRepo,
    DeleteBranch,
    DeleteRepo,
    FilesChanged,
    FinishCommit,
    FireTriggers,
    RepoCreated,
    RepoDeleted,
    StartCommit,
    Trigger,
    TriggerMove,
)
from hw_events.messages import Event
from hw_fs import domain
from hw_fs.domain import StalePlan, Summary, WriteTarget
from tests.unit.fs_events import T0, at, cid, one_off


def given(*events: Event | Iterable[Event]) -> domain.FsState:
    state = domain.FsState()
    for item in events:
        for event in [item] if isinstance(item, Event) else item:
            state = domain.evolve(state, event)  # type: ignore[arg-type]
    return state


def apply(state: domain.FsState, writes: domain.Writes) -> domain.FsState:
    for events in writes.values():
        for event in events:
            domain.evolve(state, event)  # type: ignore[arg-type]
    return state


DATA = RepoCreated(repo="data", created=T0)
THREE_ON_STAGING = [
    DATA,
    *one_off("data", "staging", 1, None),
    *one_off("data", "staging", 2, 1),
    *one_off("data", "staging", 3, 2),
]


# --- repos ----------------------------------------------------------------------------------------


def test_creating_a_repo() -> None:
    assert domain.decide_create_repo(given(), CreateRepo(repo="images", description="raw"), T0) == [
        RepoCreated(repo="images", description="raw", created=T0)
    ]


def test_creating_a_repo_that_exists_is_refused() -> None:
    with pytest.raises(AlreadyExists, match='repo "data" already exists'):
        domain.decide_create_repo(given(DATA), CreateRepo(repo="data"), T0)


@pytest.mark.parametrize("name", ["a.b", "", "with space", "slash/y", "star*", "ünïcode", "a>b"])
def test_a_repo_name_must_be_letters_digits_dash_underscore(name: str) -> None:
    with pytest.raises(UserError, match=re.escape(f'invalid repo name "{name}"')):
        domain.decide_create_repo(given(), CreateRepo(repo=name), T0)


def test_repos_are_listed_newest_first_with_the_size_of_master() -> None:
    state = given(DATA, RepoCreated(repo="new", created=at(9)), one_off("data", "master", 1, None, size=42))
    assert [(r.name, r.size_bytes) for r in domain.list_repos(state)] == [("new", 0), ("data", 42)]


def test_a_repo_read_by_another_branch_is_only_deleted_with_force() -> None:
    state = given(DATA, RepoCreated(repo="out", created=T0), one_off("data", "master", 1, None))
    apply(
        state,
        domain.decide_create_branch(
            state, CreateBranch(repo="out", branch="master", provenance=["data@master"]), cid(9), T0
        ),
    )
    with pytest.raises(UserError, match='repo "data" is read by out@master'):
        domain.decide_delete_repo(state, DeleteRepo(repo="data"))
    assert domain.decide_delete_repo(state, DeleteRepo(repo="data", force=True)) == [RepoDeleted(repo="data")]


# --- refs and ancestry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("staging", 3),
        ("staging^", 2),
        ("staging^1", 2),
        ("staging~1", 2),
        ("staging^^", 1),
        ("staging^2", 1),
        ("staging~2", 1),
        ("staging.1", 1),
        ("staging.3", 3),
        (cid(3), 3),
        (f"{cid(3)}^", 2),
    ],
)
def test_ancestry(ref: str, expected: int) -> None:
    assert domain.resolve(given(THREE_ON_STAGING), "data", ref).id == cid(expected)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("staging^3", 'invalid ancestry "staging^3": only 3 commits'),
        ("staging.4", 'invalid ancestry "staging.4": only 3 commits'),
        ("staging.0", 'invalid ancestry "staging.0": only 3 commits'),
        ("staging^~", 'invalid ancestry "staging^~": use "^" or "~", not both'),
        ("nope", 'branch "nope" not found in repo "data"'),
        (cid(99), f'commit {cid(99)} not found in repo "data"'),
        ("bad ref", 'invalid commit reference "bad ref"'),
    ],
)
def test_bad_refs_say_what_is_wrong(ref: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        domain.resolve(given(THREE_ON_STAGING), "data", ref)


# --- branches -------------------------------------------------------------------------------------


def test_a_new_branch_gets_an_empty_finished_auto_commit() -> None:
    writes = domain.decide_create_branch(given(DATA), CreateBranch(repo="data", branch="master"), cid(7), T0)
    assert writes["data"] == [
        CommitStarted(repo="data", commit=cid(7), branch="master", origin=AUTO, started=T0),
        CommitFinished(repo="data", commit=cid(7), finished=T0, size_bytes=0, files=0, layers=[]),
        BranchCreated(repo="data", branch="master", head=cid(7), created=T0),
    ]


def test_head_points_at_an_existing_commit_without_a_new_one() -> None:
    state = given(THREE_ON_STAGING)
    writes = domain.decide_create_branch(
        state, CreateBranch(repo="data", branch="master", head="staging^1"), cid(8), T0
    )
    assert writes["data"] == [BranchCreated(repo="data", branch="master", head=cid(2), created=T0)]
    apply(state, writes)
    moved = domain.decide_create_branch(
        state, CreateBranch(repo="data", branch="master", head="staging"), cid(9), T0
    )
    assert moved["data"] == [
        BranchHeadMoved(repo="data", branch="master", head=cid(3), previous=cid(2), reason=BY_HAND, moved=T0)
    ]
    assert len(state.repos["data"].commits) == 3


def test_creating_a_branch_that_exists_without_a_head_changes_nothing() -> None:
    state = given(THREE_ON_STAGING)
    assert (
        dict(domain.decide_create_branch(state, CreateBranch(repo="data", branch="staging"), cid(9), T0))
        == {}
    )


def test_branches_are_listed_newest_first() -> None:
    state = given(DATA, one_off("data", "old", 1, None), one_off("data", "new", 2, None))
    assert [b.name for b in domain.list_branches(state, "data")] == ["new", "old"]


def test_a_followed_branch_is_only_deleted_with_force() -> None:
    state = given(DATA, RepoCreated(repo="out", created=T0), one_off("data", "master", 1, None))
    apply(
        state,
        domain.decide_create_branch(
            state, CreateBranch(repo="out", branch="master", provenance=["data@master"]), cid(9), T0
        ),
    )
    with pytest.raises(UserError, match="is followed by out@master"):
        domain.decide_delete_branch(state, DeleteBranch(repo="data", branch="master"))
    assert domain.decide_delete_branch(state, DeleteBranch(repo="data", branch="master", force=True))


@pytest.mark.parametrize(
    ("provenance", "message"),
    [
        (["data@master"], "cannot have provenance on its own repo"),
        (["ghost@master"], 'repo "ghost" not found'),
        (["other@nope"], 'branch "nope" not found in repo "other"'),
        (["other"], 'invalid provenance "other": use repo@branch'),
        (["other@master", "other@dev"], 'two branches of repo "other" would be upstream'),
    ],
)
def test_bad_provenance_is_refused(provenance: list[str], message: str) -> None:
    state = given(
        DATA,
        RepoCreated(repo="other", created=T0),
        one_off("other", "master", 1, None),
        one_off("other", "dev", 2, None),
    )
    with pytest.raises(UserError, match=re.escape(message)):
        domain.decide_create_branch(
            state, CreateBranch(repo="data", branch="b", provenance=provenance), cid(9), T0
        )


# --- triggers -------------------------------------------------------------------------------------

DAILY_1MB = Trigger(branch="staging", size="1MB", cron="@daily")


def create(state: domain.FsState, branch: str, n: int, **fields: object) -> None:
    """`create branch data@<branch>` with `fields`, applied."""
    command = CreateBranch(repo="data", branch=branch, **fields)  # type: ignore[arg-type]
    apply(state, domain.decide_create_branch(state, command, cid(n), at(n)))


def test_a_new_branch_takes_its_trigger_and_shows_it() -> None:
    state = given(DATA)
    writes = domain.decide_create_branch(
        state, CreateBranch(repo="data", branch="master", trigger=DAILY_1MB), cid(5), T0
    )
    assert writes["data"][-1] == BranchCreated(
        repo="data", branch="master", head=cid(5), created=T0, trigger=DAILY_1MB
    )
    apply(state, writes)
    [info] = domain.list_branches(state, "data")
    assert info.trigger == DAILY_1MB


def test_an_existing_branch_gets_a_trigger_and_keeps_it_through_hand_moves() -> None:
    state = given(THREE_ON_STAGING, one_off("data", "master", 4, None))
    writes = domain.decide_create_branch(
        state, CreateBranch(repo="data", branch="master", trigger=DAILY_1MB), cid(5), at(5)
    )
    assert writes["data"] == [
        BranchTriggerSet(repo="data", branch="master", trigger=DAILY_1MB, set_at=at(5))
    ]  # and the head stays where it is
    apply(state, writes)
    again = domain.decide_create_branch(
        state, CreateBranch(repo="data", branch="master", trigger=DAILY_1MB), cid(6), at(6)
    )
    assert dict(again) == {}
    apply(
        state,
        domain.decide_create_branch(
            state, CreateBranch(repo="data", branch="master", head="staging"), cid(7), at(7)
        ),
    )
    master = state.repos["data"].branches["master"]
    assert (master.head, master.trigger) == (cid(3), DAILY_1MB)


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        (Trigger(branch="master", commits=1), 'branch "master" cannot trigger on itself'),
        (Trigger(branch="b", commits=1), "triggers cannot form a loop: master -> b -> a -> master"),
        (Trigger(branch="staging", size="1 elephant"), 'invalid trigger size "1 elephant"'),
        (Trigger(branch="staging", commits=-1), "cannot trigger on a negative number of commits (-1)"),
        (Trigger(branch="staging", cron="every day"), 'invalid trigger cron spec "every day"'),
        (Trigger(branch="staging"), "has no condition"),
        (Trigger(branch="", commits=1), "a trigger must name the branch it follows"),
        (Trigger(branch="no/such", commits=1), 'invalid branch name "no/such"'),
    ],
)
def test_bad_triggers_are_refused_and_change_nothing(trigger: Trigger, message: str) -> None:
    state = given(DATA)
    create(state, "a", 1, trigger=Trigger(branch="master", commits=1))
    create(state, "b", 2, trigger=Trigger(branch="a", commits=1))
    with pytest.raises(UserError, match=re.escape(message)):
        domain.decide_create_branch(
            state, CreateBranch(repo="data", branch="master", trigger=trigger), cid(9), T0
        )


def test_a_branch_cannot_have_both_provenance_and_a_trigger() -> None:
    state = pipeline_chain()
    trigger = Trigger(branch="dev", commits=1)
    with pytest.raises(UserError, match="a branch cannot have both provenance and a trigger"):
        domain.decide_create_branch(
            state, CreateBranch(repo="a", branch="master", trigger=trigger), cid(9), T0
        )
    with pytest.raises(UserError, match="a branch cannot have both provenance and a trigger"):
        domain.decide_create_branch(
            state,
            CreateBranch(repo="a", branch="new", provenance=["data@master"], trigger=trigger),
            cid(9),
            T0,
        )


def test_a_fire_moves_the_branches_in_order_and_downstream_follows() -> None:
    state = given(DATA, RepoCreated(repo="out", created=T0), one_off("data", "a", 1, None))
    create(state, "b", 2, trigger=Trigger(branch="a", commits=1))
    create(state, "c", 3, trigger=Trigger(branch="b", commits=1))
    apply(
        state,
        domain.decide_create_branch(
            state, CreateBranch(repo="out", branch="master", provenance=["data@c"]), cid(4), at(4)
        ),
    )
    command = FireTriggers(
        repo="data",
        moves=[
            TriggerMove(branch="b", head=cid(1), expected=cid(2)),
            TriggerMove(branch="c", head=cid(1), expected=cid(3)),
        ],
    )
    writes = domain.decide_fire_triggers(state, command, cid(20), at(20))
    assert writes["data"] == [
        BranchHeadMoved(
            repo="data", branch="b", head=cid(1), previous=cid(2), reason=BY_TRIGGER, moved=at(20)
        ),
        BranchHeadMoved(
            repo="data", branch="c", head=cid(1), previous=cid(3), reason=BY_TRIGGER, moved=at(20)
        ),
    ]
    assert [type(e) for e in writes["out"]] == [CommitStarted, BranchHeadMoved]
    assert writes["out"][0].commit == cid(1)  # type: ignore[attr-defined]  # named after the commit moved to


def test_a_fire_decided_on_old_news_is_refused_whole() -> None:
    state = given(DATA, one_off("data", "a", 1, None), one_off("data", "a", 5, 1))
    create(state, "b", 2, trigger=Trigger(branch="a", commits=1))
    create(state, "c", 3, head="a")  # no trigger
    stale = FireTriggers(repo="data", moves=[TriggerMove(branch="b", head=cid(5), expected=cid(1))])
    with pytest.raises(domain.TriggerOutdated, match=f"moved to {cid(2)} before its trigger"):
        domain.decide_fire_triggers(state, stale, cid(20), T0)
    source_moved_on = FireTriggers(repo="data", moves=[TriggerMove(branch="b", head=cid(1), expected=cid(2))])
    with pytest.raises(domain.TriggerOutdated, match=f'its source "a" is no longer at {cid(1)}'):
        domain.decide_fire_triggers(state, source_moved_on, cid(20), T0)
    other_trigger = FireTriggers(
        repo="data",
        moves=[TriggerMove(branch="b", head=cid(5), expected=cid(2), trigger=Trigger(branch="a", commits=9))],
    )
    with pytest.raises(domain.TriggerOutdated, match="got another trigger since this one was judged"):
        domain.decide_fire_triggers(state, other_trigger, cid(20), T0)
    fresh = FireTriggers(
        repo="data",
        moves=[TriggerMove(branch="b", head=cid(5), expected=cid(2), trigger=Trigger(branch="a", commits=1))],
    )
    assert [e.head for e in domain.decide_fire_triggers(state, fresh, cid(20), T0)["data"]] == [cid(5)]  # type: ignore[attr-defined]
    untriggered = FireTriggers(repo="data", moves=[TriggerMove(branch="c", head=cid(5), expected=cid(5))])
    with pytest.raises(domain.TriggerOutdated, match='"c" of repo "data" no longer has a trigger'):
        domain.decide_fire_triggers(state, untriggered, cid(20), T0)


# --- commits and provenance -----------------------------------------------------------------------


def pipeline_chain() -> domain.FsState:
    """data@master -> a@master -> b@master, as two chained pipelines would set them up."""
    state = given(
        DATA,
        RepoCreated(repo="a", created=T0),
        RepoCreated(repo="b", created=T0),
        one_off("data", "master", 1, None),
    )
    apply(
        state,
        domain.decide_create_branch(
            state, CreateBranch(repo="a", branch="master", provenance=["data@master"]), cid(10), T0
        ),
    )
    apply(
        state,
        domain.decide_create_branch(
            state, CreateBranch(repo="b", branch="master", provenance=["a@master"]), cid(11), T0
        ),
    )
    return state


def test_a_head_move_opens_one_commit_set_downstream() -> None:
    state = pipeline_chain()
    set_id = cid(20)
    writes = domain.decide_start_commit(state, StartCommit(repo="data", branch="master"), set_id, at(20))
    assert writes["data"][0] == CommitStarted(
        repo="data", commit=set_id, branch="master", parent=cid(1), origin=USER, started=at(20)
    )
    assert writes["a"] == [
        CommitStarted(repo="a", commit=set_id, branch="master", parent=cid(10), origin=AUTO, started=at(20)),
        BranchHeadMoved(
            repo="a", branch="master", head=set_id, previous=cid(10), reason=BY_UPSTREAM, moved=at(20)
        ),
    ]
    assert [type(e) for e in writes["b"]] == [CommitStarted, BranchHeadMoved]
    assert all(e.commit == set_id for e in writes["b"] if isinstance(e, CommitStarted))


def test_moving_a_head_by_hand_opens_commits_downstream_named_after_the_commit_moved_to() -> None:
    state = pipeline_chain()
    apply(state, {"data": one_off("data", "staging", 30, None)})
    writes = domain.decide_create_branch(
        state, CreateBranch(repo="data", branch="master", head="staging"), cid(31), T0
    )
    assert writes["data"] == [
        BranchHeadMoved(repo="data", branch="master", head=cid(30), previous=cid(1), reason=BY_HAND, moved=T0)
    ]
    assert {e.commit for e in writes["a"] + writes["b"] if isinstance(e, CommitStarted)} == {cid(30)}
    apply(state, writes)
    # moved back to a commit whose id the downstream repos already have: the command's id instead
    back = domain.decide_create_branch(
        state, CreateBranch(repo="data", branch="master", head=cid(1)), cid(32), T0
    )
    apply(state, back)
    again = domain.decide_create_branch(
        state, CreateBranch(repo="data", branch="master", head=cid(30)), cid(33), T0
    )
    assert {e.commit for e in again["a"] + again["b"] if isinstance(e, CommitStarted)} == {cid(33)}


def test_users_cannot_commit_to_or_finish_commits_of_a_followed_branch() -> None:
    state = pipeline_chain()
    with pytest.raises(UserError, match="its commits are made by its pipeline"):
        domain.decide_start_commit(state, StartCommit(repo="a", branch="master"), cid(40), T0)
    apply(state, domain.decide_start_commit(state, StartCommit(repo="data", branch="master"), cid(41), T0))
    with pytest.raises(UserError, match="is an output commit"):
        domain.finish_target(state, "a", "master")


def test_starting_a_commit_on_a_branch_with_an_open_head_is_refused() -> None:
    state = given(DATA, one_off("data", "master", 1, None))
    apply(state, domain.decide_start_commit(state, StartCommit(repo="data", branch="master"), cid(2), T0))
    with pytest.raises(UserError, match=f"already has an open commit {cid(2)}; finish it first"):
        domain.decide_start_commit(state, StartCommit(repo="data", branch="master"), cid(3), T0)


def test_finishing_checks_the_tree_it_summarised_is_still_the_commits() -> None:
    state = given(DATA, one_off("data", "master", 1, None))
    apply(state, domain.decide_start_commit(state, StartCommit(repo="data", branch="master"), cid(2), T0))
    seen = state.repos["data"].commits[cid(2)].layers
    apply(state, {"data": [FilesChanged(repo="data", commit=cid(2), layer="layers/late", size_bytes=3)]})
    with pytest.raises(StalePlan):
        domain.decide_finish_commit(
            state,
            FinishCommit(repo="data", ref="master"),
            commit_id=cid(2),
            seen=seen,
            summary=Summary(seen, 0, 0),
            now=T0,
        )
    done = domain.decide_finish_commit(
        state,
        FinishCommit(repo="data", ref="master", description="done"),
        commit_id=cid(2),
        seen=(*seen, "layers/late"),
        summary=Summary(("layers/1", "layers/late"), 13, 2),
        now=T0,
    )
    apply(state, done)
    commit = state.repos["data"].commits[cid(2)]
    assert (commit.size_bytes, commit.files, commit.description) == (13, 2, "done")
    with pytest.raises(UserError, match=f"commit {cid(2)} is already finished"):
        domain.finish_target(state, "data", "master")


# --- writes ---------------------------------------------------------------------------------------


def test_a_write_without_an_open_commit_makes_a_finished_user_commit() -> None:
    state = given(DATA, one_off("data", "master", 1, None))
    plan = domain.write_target(state, "data", "master")
    assert plan == WriteTarget(None, "master", cid(1), ("layers/1",))
    writes = domain.decide_write(
        state,
        "data",
        "master",
        planned=plan,
        layer="layers/2",
        counts=(1, 5),
        summary=Summary(("layers/1", "layers/2"), 15, 2),
        set_id=cid(2),
        description="",
        now=T0,
    )
    assert [type(e) for e in writes["data"]] == [CommitStarted, FilesChanged, CommitFinished, BranchHeadMoved]
    apply(state, writes)
    assert domain.resolve(state, "data", "master").size_bytes == 15
    assert domain.resolve(state, "data", "master").parent == cid(1)


def test_a_write_to_a_missing_branch_creates_it_with_a_parentless_commit() -> None:
    state = given(DATA)
    plan = domain.write_target(state, "data", "staging")
    assert plan == WriteTarget(None, "staging", None, ())
    writes = domain.decide_write(
        state,
        "data",
        "staging",
        planned=plan,
        layer="layers/1",
        counts=(1, 1),
        summary=Summary(("layers/1",), 1, 1),
        set_id=cid(1),
        description="",
        now=T0,
    )
    assert isinstance(writes["data"][-1], BranchCreated)
    assert writes["data"][0] == CommitStarted(
        repo="data", commit=cid(1), branch="staging", origin=USER, started=T0
    )


def test_a_write_into_an_open_commit_adds_a_layer() -> None:
    state = given(DATA, one_off("data", "master", 1, None))
    apply(state, domain.decide_start_commit(state, StartCommit(repo="data", branch="master"), cid(2), T0))
    plan = domain.write_target(state, "data", "master")
    assert plan.open_commit == cid(2)
    assert domain.write_target(state, "data", cid(2)) == plan
    writes = domain.decide_write(
        state,
        "data",
        "master",
        planned=plan,
        layer="layers/x",
        counts=(3, 30),
        summary=Summary(("layers/1", "layers/x"), 40, 4),
        set_id=cid(9),
        description="",
        now=T0,
    )
    assert writes["data"] == [
        FilesChanged(
            repo="data", commit=cid(2), layer="layers/x", files=3, bytes=30, size_bytes=40, total_files=4
        )
    ]


def test_a_write_planned_on_an_old_head_is_stale() -> None:
    state = given(DATA, one_off("data", "master", 1, None))
    plan = domain.write_target(state, "data", "master")
    apply(state, {"data": one_off("data", "master", 2, 1)})
    with pytest.raises(StalePlan):
        domain.decide_write(
            state,
            "data",
            "master",
            planned=plan,
            layer="layers/3",
            counts=(1, 1),
            summary=Summary((), 0, 0),
            set_id=cid(3),
            description="",
            now=T0,
        )


def test_a_write_to_an_unknown_commit_id_is_not_a_new_branch() -> None:
    with pytest.raises(NotFound, match=f"commit {cid(77)} not found in repo"):
        domain.write_target(given(THREE_ON_STAGING), "data", cid(77))


def test_an_open_commit_counts_its_files() -> None:
    state = given(DATA, one_off("data", "master", 1, None))
    apply(state, domain.decide_start_commit(state, StartCommit(repo="data", branch="master"), cid(2), T0))
    plan = domain.write_target(state, "data", "master")
    apply(
        state,
        domain.decide_write(
            state,
            "data",
            "master",
            planned=plan,
            layer="layers/x",
            counts=(3, 30),
            summary=Summary(("layers/1", "layers/x"), 40, 4),
            set_id=cid(9),
            description="",
            now=T0,
        ),
    )
    assert state.repos["data"].commits[cid(2)].files == 4


def test_writes_to_finished_commits_or_ancestry_are_refused() -> None:
    state = given(THREE_ON_STAGING)
    with pytest.raises(UserError, match=f"commit {cid(2)} is finished; start a new commit"):
        domain.write_target(state, "data", cid(2))
    with pytest.raises(UserError, match='cannot write to "staging\\^1"'):
        domain.write_target(state, "data", "staging^1")


def test_commit_ids_already_used_are_refused() -> None:
    state = given(THREE_ON_STAGING)
    with pytest.raises(AlreadyExists):
        domain.decide_start_commit(state, StartCommit(repo="data", branch="other"), cid(3), T0)


def test_list_commits_of_a_branch_walks_back_from_its_head() -> None:
    state = given(THREE_ON_STAGING, one_off("data", "master", 9, None))
    assert [c.id for c in domain.list_commits(state, "data", "staging")] == [cid(3), cid(2), cid(1)]
    assert domain.list_commits(state, "data")[0].id == cid(9)
    assert len(domain.list_commits(state, "data", limit=2)) == 2
    with pytest.raises(NotFound, match='branch "x" not found in repo "data"'):
        domain.list_commits(state, "data", "x")
