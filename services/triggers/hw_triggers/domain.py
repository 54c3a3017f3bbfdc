"""The triggers service's state and decisions: pure, no I/O.

State: for each repo, its branches (head, trigger, when and at which point of the log they last
moved) and its commits (parent, size, finished). It is folded from the file store's events, so it
is rebuilt from the log on every start.

`clock` counts the events folded; positions on it order what happened. A branch's `advanced_at`
is when a commit finished on it or its trigger moved it: the cue for the branches that follow it.
A follower whose last move (or trigger change) is older than its source's cue is *due*: its
trigger has news to judge. Hand moves of a source are not a cue (they never fire its followers);
a hand move of a follower consumes the cue, as the user decided where it stands.

Decisions (`plan`) are pure functions of that state and the time: judged again after a restart,
on the same state, they come out the same, which is what makes a fire neither lost nor doubled.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import NamedTuple

import msgspec

from hw_events.errors import UserError
from hw_events.fs import (
    AUTO,
    BY_COMMIT,
    BY_TRIGGER,
    EVENTS,
    BranchCreated,
    BranchDeleted,
    BranchHeadMoved,
    BranchTriggerSet,
    CommitFinished,
    CommitStarted,
    FilesChanged,
    FsEvent,
    RepoCreated,
    RepoDeleted,
    Trigger,
)
from hw_events.projection import Projection
from hw_events.trigger_conditions import Cron, parse_size

_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


class CommitView(msgspec.Struct, array_like=True):
    branch: str
    parent: str | None
    counts: bool  # towards --trigger-commits: every commit but the empty AUTO root of a branch
    size_bytes: int = 0
    finished: bool = False


class BranchView(msgspec.Struct, kw_only=True):
    head: str
    trigger: Trigger | None = None
    moved: datetime  # when its head last changed (or it got its current trigger, if later)
    moved_at: int = 0  # clock then
    advanced_at: int = 0  # clock when a commit finished on it or its trigger moved it (0: never)


class RepoView(msgspec.Struct, kw_only=True):
    branches: dict[str, BranchView] = msgspec.field(default_factory=dict)
    commits: dict[str, CommitView] = msgspec.field(default_factory=dict)


class TriggersState(msgspec.Struct, kw_only=True):
    repos: dict[str, RepoView] = msgspec.field(default_factory=dict)
    clock: int = 0
    last_time: datetime = _EPOCH  # the latest time an event carried (early head moves carry none)


class Move(NamedTuple):
    branch: str
    head: str  # where the trigger moves it
    expected: str  # where it is now


def _advanced(repo: RepoView, branch: BranchView, clock: int) -> None:
    commit = repo.commits.get(branch.head)
    if commit is not None and commit.finished:
        branch.advanced_at = clock


def evolve(state: TriggersState, event: FsEvent) -> TriggersState:  # noqa: PLR0912 - one case per event
    """Fold one file store event into the state (in place: the projector owns the state)."""
    state.clock += 1
    clock = state.clock
    match event:
        case RepoCreated():
            state.repos[event.repo] = RepoView()
            state.last_time = max(state.last_time, event.created)
        case RepoDeleted():
            state.repos.pop(event.repo, None)
        case CommitStarted():
            commits = state.repos[event.repo].commits
            parent = commits.get(event.parent) if event.parent else None
            commits[event.commit] = CommitView(
                branch=event.branch,
                parent=event.parent,
                counts=not (event.parent is None and event.origin == AUTO),
                size_bytes=parent.size_bytes if parent else 0,
            )
            state.last_time = max(state.last_time, event.started)
        case FilesChanged():
            state.repos[event.repo].commits[event.commit].size_bytes = event.size_bytes
        case CommitFinished():
            repo = state.repos[event.repo]
            commit = repo.commits[event.commit]
            commit.size_bytes, commit.finished = event.size_bytes, True
            branch = repo.branches.get(commit.branch)
            if branch is not None and branch.head == event.commit:  # an open commit at the head
                branch.advanced_at = clock
            state.last_time = max(state.last_time, event.finished)
        case BranchCreated():
            repo = state.repos[event.repo]
            branch = BranchView(head=event.head, trigger=event.trigger, moved=event.created, moved_at=clock)
            repo.branches[event.branch] = branch
            if event.reason == BY_COMMIT:
                _advanced(repo, branch, clock)
            state.last_time = max(state.last_time, event.created)
        case BranchHeadMoved():
            repo = state.repos[event.repo]
            branch = repo.branches[event.branch]
            branch.head, branch.moved_at = event.head, clock
            branch.moved = event.moved or state.last_time
            if event.reason in (BY_COMMIT, BY_TRIGGER):
                _advanced(repo, branch, clock)
        case BranchDeleted():
            state.repos[event.repo].branches.pop(event.branch, None)
        case BranchTriggerSet():
            branch = state.repos[event.repo].branches[event.branch]
            branch.trigger, branch.moved_at = event.trigger, clock
            branch.moved = max(branch.moved, event.set_at)  # a cron counts ticks from here on
        case _:
            raise TypeError(f"triggers cannot apply {type(event).__name__}")
    return state


PROJECTION = Projection(
    name="triggers-fs",
    schema="triggers-fs-1",
    state_type=TriggersState,
    initial=TriggersState,
    evolve=evolve,
    event_types=EVENTS,  # every file store event: each moves the clock
)

# --- conditions ------------------------------------------------------------------------------------


# fs refuses specs these cannot read; one it took under older rules must still not stop the others.


@functools.lru_cache(maxsize=1024)
def _size(text: str) -> int | None:
    try:
        return parse_size(text)
    except UserError:
        return None


@functools.lru_cache(maxsize=1024)
def _cron(spec: str) -> Cron | None:
    try:
        return Cron(spec)
    except UserError:
        return None


def _ticked(spec: str, since: datetime, now: datetime) -> bool:
    cron = _cron(spec)
    return cron is not None and cron.ticked_between(since, now)


def commits_since(repo: RepoView, new: str, old: str, enough: int) -> int:
    """Commits from `new` back to (not including) `old` or the root; counting stops at `enough`."""
    count, at = 0, repo.commits.get(new)
    current: str | None = new
    while at is not None and current != old and count < enough:
        count += at.counts
        current = at.parent
        at = repo.commits.get(current) if current is not None else None
    return count


def conditions_hold(repo: RepoView, branch: BranchView, new: str, now: datetime) -> bool:
    """Whether `branch`'s trigger moves it from its head to `new` now: any condition, or all."""
    trigger = branch.trigger
    assert trigger is not None
    results: list[bool] = []
    if trigger.size:
        old_size = repo.commits[branch.head].size_bytes if branch.head in repo.commits else 0
        threshold = _size(trigger.size)
        results.append(threshold is not None and repo.commits[new].size_bytes - old_size >= threshold)
    if trigger.commits:
        results.append(commits_since(repo, new, branch.head, trigger.commits) >= trigger.commits)
    if trigger.cron:
        results.append(_ticked(trigger.cron, branch.moved, now))
    if not results:  # no condition: --trigger-all follows every commit
        return trigger.all
    return all(results) if trigger.all else any(results)


def followers(repo: RepoView, source: str) -> list[str]:
    return [name for name, b in repo.branches.items() if b.trigger is not None and b.trigger.branch == source]


def plan(repo: RepoView, first: Iterable[str], now: datetime) -> list[Move]:
    """The moves the triggers of `first` make now, each judged against its source's head, and the
    moves of their followers in turn (a chain fires in one pass)."""
    moved: dict[str, str] = {}
    moves: list[Move] = []
    pending = list(first)
    while pending:
        name = pending.pop(0)
        branch = repo.branches.get(name)
        if name in moved or branch is None or branch.trigger is None:
            continue
        source = repo.branches.get(branch.trigger.branch)
        if source is None:  # a trigger may name a branch that does not exist yet
            continue
        new = moved.get(branch.trigger.branch, source.head)
        commit = repo.commits.get(new)
        if new == branch.head or commit is None or not commit.finished:
            continue
        if conditions_hold(repo, branch, new, now):
            moves.append(Move(name, new, branch.head))
            moved[name] = new
            pending += followers(repo, name)
    return moves


# --- what is due -----------------------------------------------------------------------------------


def triggered(state: TriggersState) -> Iterator[tuple[str, str, BranchView]]:
    for repo_name, repo in state.repos.items():
        for name, branch in repo.branches.items():
            if branch.trigger is not None:
                yield repo_name, name, branch


def cue(state: TriggersState, repo: str, branch: BranchView) -> int:
    """The point of the log with news for `branch`'s trigger: its source's last advance, if that came
    after the branch last moved; else 0."""
    assert branch.trigger is not None
    source = state.repos[repo].branches.get(branch.trigger.branch)
    if source is None or source.advanced_at <= branch.moved_at:
        return 0
    return source.advanced_at


def due_on_commits(state: TriggersState, judged: Mapping[tuple[str, str], int]) -> dict[str, list[str]]:
    """Per repo, the triggered branches whose source advanced since they moved and since they were
    last judged (`judged`: branch -> the cue it was judged on)."""
    due: dict[str, list[str]] = {}
    for repo, name, branch in triggered(state):
        news = cue(state, repo, branch)
        if news and news > judged.get((repo, name), 0):
            due.setdefault(repo, []).append(name)
    return due


def since(branch: BranchView, ticked: Mapping[tuple[str, str], datetime], key: tuple[str, str]) -> datetime:
    last = ticked.get(key)
    return branch.moved if last is None or last < branch.moved else last


def due_on_ticks(
    state: TriggersState, ticked: Mapping[tuple[str, str], datetime], now: datetime
) -> dict[str, list[str]]:
    """Per repo, the branches with a cron whose next tick (after they moved, or after their last
    tick was judged: `ticked`) has come."""
    due: dict[str, list[str]] = {}
    for repo, name, branch in triggered(state):
        assert branch.trigger is not None
        if branch.trigger.cron and _ticked(branch.trigger.cron, since(branch, ticked, (repo, name)), now):
            due.setdefault(repo, []).append(name)
    return due


def next_tick(state: TriggersState, ticked: Mapping[tuple[str, str], datetime]) -> datetime | None:
    """When the earliest cron tick to come is, if any trigger has a cron."""
    ticks = []
    for repo, name, branch in triggered(state):
        assert branch.trigger is not None
        cron = _cron(branch.trigger.cron) if branch.trigger.cron else None
        if cron is not None:
            tick = cron.next_after(since(branch, ticked, (repo, name)))
            if tick is not None:
                ticks.append(tick)
    return min(ticks, default=None)
