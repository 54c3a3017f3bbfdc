"""The file store's state and decisions: pure, no I/O.

State: repos, each with its branches and commits. A commit's files are a list of layers in the
object store (its tree); the handlers read those and pass what they found (`Summary`) into the
decisions here, which check it still matches the state they decide on (`StalePlan` otherwise).

Decisions return `Writes`: events per repo, appended together (one atomic batch when a head move
opens commits downstream in other repos).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import msgspec

from hw_events.errors import AlreadyExists, ConcurrencyConflict, NotFound, TransientError, UserError
from hw_events.fs import (
    AUTO,
    BY_COMMIT,
    BY_HAND,
    BY_PIPELINE,
    BY_TRIGGER,
    BY_UPSTREAM,
    EVENTS,
    USER,
    BranchCreated,
    BranchDeleted,
    BranchHeadMoved,
    BranchInfo,
    BranchTriggerSet,
    CommitFinished,
    CommitInfo,
    CommitStarted,
    CreateBranch,
    CreateRepo,
    DeleteBranch,
    DeleteRepo,
    FilesChanged,
    FinishCommit,
    FinishOutputCommit,
    FireTriggers,
    FsEvent,
    OpenOutputCommit,
    RepoCreated,
    RepoDeleted,
    RepoInfo,
    StartCommit,
    Trigger,
    is_commit_id,
)
from hw_events.messages import Event
from hw_events.projection import Projection
from hw_events.trigger_conditions import check_conditions

_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_REF = re.compile(r"^(?P<base>[A-Za-z0-9_-]+)(?:(?P<up>(?:[\^~]\d*)+)|\.(?P<nth>\d+))?$")
_STEP = re.compile(r"([\^~])(\d*)")

Writes = dict[str, list[Event]]  # repo -> events for that repo's aggregate


class Commit(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    branch: str
    parent: str | None
    origin: str
    description: str
    started: datetime
    finished: datetime | None = None
    size_bytes: int = 0
    files: int = 0
    layers: tuple[str, ...] = ()  # the tree: parent's layers, then this commit's own
    error: str = ""  # an output commit whose job failed


class Branch(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    head: str
    provenance: tuple[str, ...] = ()  # "repo@branch"
    created: datetime
    trigger: Trigger | None = None


class Repo(msgspec.Struct, kw_only=True):
    name: str
    description: str
    created: datetime
    branches: dict[str, Branch] = msgspec.field(default_factory=dict)
    commits: dict[str, Commit] = msgspec.field(default_factory=dict)


class FsState(msgspec.Struct, kw_only=True):
    repos: dict[str, Repo] = msgspec.field(default_factory=dict)


class StalePlan(TransientError):
    """The state moved between reading the tree and deciding: read again."""


class Summary(NamedTuple):
    """What the handler found in the object store for a tree it is about to commit."""

    layers: tuple[str, ...]  # the tree to record (compacted when it grew long)
    size_bytes: int
    files: int


class WriteTarget(NamedTuple):
    """Where a write to `ref` goes: into an open commit, or into a new commit on `branch`."""

    open_commit: str | None
    branch: str
    parent: str | None
    base_layers: tuple[str, ...]  # the tree the write applies on top of


# --- evolve ----------------------------------------------------------------------------------------


def evolve(state: FsState, event: FsEvent) -> FsState:
    """Fold one event into the state (in place: the projector owns the state)."""
    match event:
        case RepoCreated():
            state.repos[event.repo] = Repo(
                name=event.repo, description=event.description, created=event.created
            )
        case RepoDeleted():
            state.repos.pop(event.repo, None)
        case CommitStarted():
            repo = state.repos[event.repo]
            parent = repo.commits.get(event.parent) if event.parent else None
            repo.commits[event.commit] = Commit(
                id=event.commit,
                branch=event.branch,
                parent=event.parent,
                origin=event.origin,
                description=event.description,
                started=event.started,
                size_bytes=parent.size_bytes if parent else 0,
                files=parent.files if parent else 0,
                layers=parent.layers if parent else (),
            )
        case FilesChanged():
            repo = state.repos[event.repo]
            commit = repo.commits[event.commit]
            repo.commits[event.commit] = msgspec.structs.replace(
                commit,
                layers=(*commit.layers, event.layer),
                size_bytes=event.size_bytes,
                files=event.total_files,
            )
        case CommitFinished():
            repo = state.repos[event.repo]
            commit = repo.commits[event.commit]
            repo.commits[event.commit] = msgspec.structs.replace(
                commit,
                finished=event.finished,
                size_bytes=event.size_bytes,
                files=event.files,
                layers=tuple(event.layers),
                description=commit.description if event.description is None else event.description,
                error=event.error,
            )
        case BranchCreated():
            state.repos[event.repo].branches[event.branch] = Branch(
                name=event.branch,
                head=event.head,
                provenance=tuple(event.provenance),
                created=event.created,
                trigger=event.trigger,
            )
        case BranchHeadMoved():
            branches = state.repos[event.repo].branches
            branches[event.branch] = msgspec.structs.replace(branches[event.branch], head=event.head)
        case BranchDeleted():
            state.repos[event.repo].branches.pop(event.branch, None)
        case BranchTriggerSet():
            branches = state.repos[event.repo].branches
            branches[event.branch] = msgspec.structs.replace(branches[event.branch], trigger=event.trigger)
        case _:
            raise TypeError(f"fs cannot apply {type(event).__name__}")
    return state


PROJECTION = Projection(
    name="fs",
    schema="fs-3",
    state_type=FsState,
    initial=FsState,
    evolve=evolve,
    event_types=EVENTS,
)

# --- names and lookups -----------------------------------------------------------------------------


def check_name(kind: str, name: str) -> str:
    """`name` if it is a valid repo or branch name, else a UserError saying why."""
    if not _NAME.match(name):
        raise UserError(f'invalid {kind} name "{name}": use only letters, digits, "_" and "-"')
    return name


def repo_of(state: FsState, name: str) -> Repo:
    check_name("repo", name)
    repo = state.repos.get(name)
    if repo is None:
        raise NotFound(f'repo "{name}" not found')
    return repo


def branch_of(repo: Repo, name: str) -> Branch:
    check_name("branch", name)
    branch = repo.branches.get(name)
    if branch is None:
        raise NotFound(f'branch "{name}" not found in repo "{repo.name}"')
    return branch


def chain(repo: Repo, commit: Commit) -> list[Commit]:
    """`commit` and its ancestors, newest first."""
    out = [commit]
    while out[-1].parent is not None and out[-1].parent in repo.commits:
        out.append(repo.commits[out[-1].parent])
    return out


def resolve(state: FsState, repo_name: str, ref: str) -> Commit:
    """The commit `ref` names: a branch or commit id, with optional ancestry (`^N`, `~N`, `.N`)."""
    repo = repo_of(state, repo_name)
    match = _REF.match(ref)
    if match is None:
        raise UserError(
            f'invalid commit reference "{ref}": use a branch, a commit id, or ancestry like "master^2"'
        )
    base = match["base"]
    if base in repo.branches:
        commit = repo.commits[repo.branches[base].head]
    elif is_commit_id(base):
        found = repo.commits.get(base)
        if found is None:
            raise NotFound(f'commit {base} not found in repo "{repo.name}"')
        commit = found
    else:
        raise NotFound(f'branch "{base}" not found in repo "{repo.name}"')
    if match["up"]:
        steps = _STEP.findall(match["up"])
        if len({sep for sep, _ in steps}) > 1:
            raise UserError(f'invalid ancestry "{ref}": use "^" or "~", not both')
        back = sum(int(n) if n else 1 for _, n in steps)
        line = chain(repo, commit)
        if back >= len(line):
            raise UserError(f'invalid ancestry "{ref}": only {len(line)} commits')
        return line[back]
    if match["nth"]:
        line = chain(repo, commit)[::-1]
        nth = int(match["nth"])
        if not 1 <= nth <= len(line):
            raise UserError(f'invalid ancestry "{ref}": only {len(line)} commits')
        return line[nth - 1]
    return commit


# --- replies ---------------------------------------------------------------------------------------


def repo_info(state: FsState, name: str) -> RepoInfo:
    repo = repo_of(state, name)
    master = repo.branches.get("master")
    size = repo.commits[master.head].size_bytes if master else 0
    return RepoInfo(name=repo.name, created=repo.created, description=repo.description, size_bytes=size)


def list_repos(state: FsState) -> list[RepoInfo]:
    """Newest first, as `pachctl list repo` shows them."""
    ordered = sorted(state.repos.values(), key=lambda r: r.created, reverse=True)
    return [repo_info(state, r.name) for r in ordered]


def branch_info(repo: Repo, branch: Branch) -> BranchInfo:
    return BranchInfo(
        repo=repo.name,
        name=branch.name,
        head=branch.head,
        trigger=branch.trigger,
        provenance=list(branch.provenance),
        created=branch.created,
    )


def list_branches(state: FsState, repo_name: str) -> list[BranchInfo]:
    repo = repo_of(state, repo_name)
    ordered = sorted(repo.branches.values(), key=lambda b: b.created, reverse=True)
    return [branch_info(repo, b) for b in ordered]


def commit_info(repo: Repo, commit: Commit) -> CommitInfo:
    return CommitInfo(
        repo=repo.name,
        branch=commit.branch,
        id=commit.id,
        parent=commit.parent,
        origin=commit.origin,
        started=commit.started,
        finished=commit.finished,
        size_bytes=commit.size_bytes,
        description=commit.description,
        files=commit.files,
        error=commit.error,
    )


def list_commits(state: FsState, repo_name: str, branch: str = "", limit: int = 0) -> list[CommitInfo]:
    """A branch's commits from its head back, or all of a repo's commits, newest first."""
    repo = repo_of(state, repo_name)
    if branch:
        commits = chain(repo, repo.commits[branch_of(repo, branch).head])
    else:
        commits = sorted(repo.commits.values(), key=lambda c: c.started, reverse=True)
    return [commit_info(repo, c) for c in (commits[:limit] if limit > 0 else commits)]


# --- repos -----------------------------------------------------------------------------------------


def _followers(state: FsState, repo: str, branch: str | None = None) -> list[str]:
    """`repo@branch` of every branch whose provenance names `repo` (or `repo@branch`)."""
    out = []
    for other in state.repos.values():
        for b in other.branches.values():
            for source in b.provenance:
                source_repo, _, source_branch = source.partition("@")
                if source_repo == repo and (branch is None or source_branch == branch) and other.name != repo:
                    out.append(f"{other.name}@{b.name}")
    return out


def decide_create_repo(state: FsState, command: CreateRepo, now: datetime) -> list[Event]:
    check_name("repo", command.repo)
    if command.repo in state.repos:
        raise AlreadyExists(f'repo "{command.repo}" already exists')
    return [RepoCreated(repo=command.repo, description=command.description, created=now)]


def decide_delete_repo(state: FsState, command: DeleteRepo) -> list[Event]:
    repo_of(state, command.repo)
    readers = _followers(state, command.repo)
    if readers and not command.force:
        raise UserError(
            f'repo "{command.repo}" is read by {", ".join(sorted(readers))}; '
            "delete those first or use --force"
        )
    return [RepoDeleted(repo=command.repo)]


# --- branches --------------------------------------------------------------------------------------


def _check_unused(repo: Repo, commit_id: str) -> None:
    """A new commit's id (its command's) must be new to the repo: a command id reused much later."""
    if commit_id in repo.commits:
        raise AlreadyExists(f'commit {commit_id} already exists in repo "{repo.name}"')


def _downstream(state: FsState, repo: str, branch: str) -> list[tuple[str, str]]:
    """Branches that follow `repo@branch`, directly or not, in the order a head move reaches them."""
    found: list[tuple[str, str]] = []
    frontier = [(repo, branch)]
    while frontier:
        r, b = frontier.pop(0)
        for follower in _followers(state, r, b):
            fr, _, fb = follower.partition("@")
            if (fr, fb) not in found:
                found.append((fr, fb))
                frontier.append((fr, fb))
    return found


def propagate(state: FsState, repo: str, branch: str, *, set_id: str, now: datetime, writes: Writes) -> None:
    """A head moved on `repo@branch`: open an AUTO commit with id `set_id` on every branch downstream."""
    for down_repo, down_branch in _downstream(state, repo, branch):
        target = state.repos[down_repo]
        current = target.branches[down_branch]
        opened = any(isinstance(e, CommitStarted) and e.commit == set_id for e in writes[down_repo])
        if opened or set_id in target.commits:
            continue
        writes[down_repo] += [
            CommitStarted(
                repo=down_repo,
                commit=set_id,
                branch=down_branch,
                parent=current.head,
                origin=AUTO,
                started=now,
            ),
            BranchHeadMoved(
                repo=down_repo,
                branch=down_branch,
                head=set_id,
                previous=current.head,
                reason=BY_UPSTREAM,
                moved=now,
            ),
        ]


def set_for_move(state: FsState, repo: str, branch: str, head: str, fallback: str) -> str:
    """The id of the commits a head move opens downstream: the new head's own id, so a job is
    named after the commit it processes (as users look it up), unless a downstream repo already
    has a commit of that id (the head moved back to a commit it held before): then `fallback`."""
    for down_repo, _ in _downstream(state, repo, branch):
        if head in state.repos[down_repo].commits:
            return fallback
    return head


def _check_provenance(state: FsState, repo: str, sources: list[str]) -> list[str]:
    """Valid `repo@branch` sources: existing, not this repo, and no repo twice upstream."""
    closure: list[tuple[str, str]] = []
    pending = list(sources)
    while pending:
        source = pending.pop(0)
        source_repo, sep, source_branch = source.partition("@")
        if not sep or not source_branch:
            raise UserError(f'invalid provenance "{source}": use repo@branch')
        if source_repo == repo:
            raise UserError(f'a branch cannot have provenance on its own repo ("{source}")')
        upstream = branch_of(repo_of(state, source_repo), source_branch)
        if (source_repo, source_branch) in closure:
            continue
        if any(r == source_repo for r, _ in closure):
            raise UserError(f'two branches of repo "{source_repo}" would be upstream of this branch')
        closure.append((source_repo, source_branch))
        pending += list(upstream.provenance)
    return sorted(set(sources))


def check_trigger(repo: Repo, branch: str, trigger: Trigger, provenance: Sequence[str]) -> None:
    """A UserError naming what is wrong with `trigger` for `repo@branch`, if anything is."""
    if not trigger.branch:
        raise UserError("a trigger must name the branch it follows (--trigger BRANCH)")
    check_name("branch", trigger.branch)
    if trigger.branch == branch:
        raise UserError(f'branch "{branch}" cannot trigger on itself')
    path = [branch, trigger.branch]
    while (source := repo.branches.get(path[-1])) is not None and source.trigger is not None:
        path.append(source.trigger.branch)
        if path[-1] == branch or path[-1] in path[1:-1]:
            raise UserError(f"triggers cannot form a loop: {' -> '.join(path)}")
    if provenance:
        raise UserError(
            f'branch "{branch}" follows {", ".join(provenance)}: '
            "a branch cannot have both provenance and a trigger"
        )
    check_conditions(trigger.size, trigger.commits, trigger.cron)
    if not (trigger.size or trigger.commits or trigger.cron or trigger.all):
        raise UserError(
            f'the trigger on "{trigger.branch}" has no condition: give --trigger-size, '
            "--trigger-commits or --trigger-cron (or --trigger-all to follow every commit)"
        )


def decide_create_branch(state: FsState, command: CreateBranch, set_id: str, now: datetime) -> Writes:
    """Create a branch, or move an existing one's head by hand and/or give it a trigger."""
    repo = repo_of(state, command.repo)
    check_name("branch", command.branch)
    writes: Writes = defaultdict(list)
    provenance = _check_provenance(state, command.repo, command.provenance)
    existing = repo.branches.get(command.branch)
    if existing is not None and provenance and tuple(provenance) != existing.provenance:
        raise UserError(f'branch "{command.branch}" exists; changing its provenance is not supported yet')
    trigger = command.trigger
    if trigger is not None:
        check_trigger(repo, command.branch, trigger, existing.provenance if existing else provenance)
    head = resolve(state, command.repo, command.head) if command.head else None
    if existing is not None:
        if trigger is not None and trigger != existing.trigger:
            writes[repo.name].append(
                BranchTriggerSet(repo=repo.name, branch=command.branch, trigger=trigger, set_at=now)
            )
        if head is not None and existing.head != head.id:
            writes[repo.name].append(
                BranchHeadMoved(
                    repo=repo.name,
                    branch=command.branch,
                    head=head.id,
                    previous=existing.head,
                    reason=BY_HAND,
                    moved=now,
                )
            )
            move_set = set_for_move(state, repo.name, command.branch, head.id, set_id)
            propagate(state, repo.name, command.branch, set_id=move_set, now=now, writes=writes)
        return writes
    if head is None:
        _check_unused(repo, set_id)
        writes[repo.name].append(
            CommitStarted(repo=repo.name, commit=set_id, branch=command.branch, origin=AUTO, started=now)
        )
        if not provenance:  # a branch that follows others keeps its first commit open for its pipeline
            writes[repo.name].append(
                CommitFinished(repo=repo.name, commit=set_id, finished=now, size_bytes=0, files=0, layers=[])
            )
    writes[repo.name].append(
        BranchCreated(
            repo=repo.name,
            branch=command.branch,
            head=head.id if head else set_id,
            provenance=provenance,
            created=now,
            trigger=trigger,
        )
    )
    return writes


class TriggerOutdated(ConcurrencyConflict):
    """A trigger fired on news the file store has moved past: its service decides again."""


def decide_fire_triggers(state: FsState, command: FireTriggers, set_id: str, now: datetime) -> Writes:
    """Move triggered branches, in order, each from the head it was decided on; downstream follows."""
    repo = repo_of(state, command.repo)
    writes: Writes = defaultdict(list)
    heads: dict[str, str] = {}  # heads as the earlier moves of this command leave them
    for move in command.moves:
        where = f'branch "{move.branch}" of repo "{repo.name}"'
        branch = repo.branches.get(move.branch)
        if branch is None or branch.trigger is None:
            raise TriggerOutdated(f"{where} no longer has a trigger")
        if move.trigger is not None and move.trigger != branch.trigger:
            raise TriggerOutdated(f"{where} got another trigger since this one was judged")
        current = heads.get(move.branch, branch.head)
        if current != move.expected:
            raise TriggerOutdated(
                f"{where} moved to {current} before its trigger could move it from {move.expected}"
            )
        source_name = branch.trigger.branch
        source = heads.get(source_name) or (
            repo.branches[source_name].head if source_name in repo.branches else None
        )
        if source != move.head:
            raise TriggerOutdated(f'{where}: its source "{source_name}" is no longer at {move.head}')
        target = repo.commits.get(move.head)
        if target is None or target.finished is None:
            raise TriggerOutdated(f"{where}: {move.head} is not a finished commit of the repo")
        writes[repo.name].append(
            BranchHeadMoved(
                repo=repo.name,
                branch=move.branch,
                head=move.head,
                previous=current,
                reason=BY_TRIGGER,
                moved=now,
            )
        )
        heads[move.branch] = move.head
        move_set = set_for_move(state, repo.name, move.branch, move.head, set_id)
        propagate(state, repo.name, move.branch, set_id=move_set, now=now, writes=writes)
    return writes


def decide_delete_branch(state: FsState, command: DeleteBranch) -> Writes:
    repo = repo_of(state, command.repo)
    branch_of(repo, command.branch)
    readers = _followers(state, command.repo, command.branch)
    if readers and not command.force:
        raise UserError(
            f'branch "{command.branch}" of repo "{command.repo}" is followed by '
            f"{', '.join(sorted(readers))}; "
            "delete those first or use --force"
        )
    return {repo.name: [BranchDeleted(repo=repo.name, branch=command.branch)]}


# --- commits ---------------------------------------------------------------------------------------


def _writable_branch(repo: Repo, name: str) -> Branch | None:
    check_name("branch", name)
    branch = repo.branches.get(name)
    if branch is not None and branch.provenance:
        raise UserError(
            f'branch "{name}" of repo "{repo.name}" follows {", ".join(branch.provenance)}: '
            "its commits are made by its pipeline, not by hand"
        )
    return branch


def _new_commit_on(
    repo: Repo, branch_name: str, *, set_id: str, now: datetime, description: str, writes: Writes
) -> Branch | None:
    """Start a USER commit `set_id` on a branch (created if missing) and move the head to it."""
    _check_unused(repo, set_id)
    branch = _writable_branch(repo, branch_name)
    parent = branch.head if branch else None
    writes[repo.name].append(
        CommitStarted(
            repo=repo.name,
            commit=set_id,
            branch=branch_name,
            parent=parent,
            origin=USER,
            description=description,
            started=now,
        )
    )
    return branch


def _move_head(
    state: FsState,
    repo: Repo,
    branch_name: str,
    branch: Branch | None,
    *,
    set_id: str,
    now: datetime,
    writes: Writes,
) -> None:
    if branch is None:
        writes[repo.name].append(
            BranchCreated(repo=repo.name, branch=branch_name, head=set_id, created=now, reason=BY_COMMIT)
        )
    else:
        writes[repo.name].append(
            BranchHeadMoved(
                repo=repo.name,
                branch=branch_name,
                head=set_id,
                previous=branch.head,
                reason=BY_COMMIT,
                moved=now,
            )
        )
    propagate(state, repo.name, branch_name, set_id=set_id, now=now, writes=writes)


def decide_start_commit(state: FsState, command: StartCommit, set_id: str, now: datetime) -> Writes:
    repo = repo_of(state, command.repo)
    branch = _writable_branch(repo, command.branch)
    if branch is not None and repo.commits[branch.head].finished is None:
        raise UserError(
            f'branch "{command.branch}" of repo "{repo.name}" already has an open commit {branch.head}; '
            "finish it first"
        )
    writes: Writes = defaultdict(list)
    _new_commit_on(
        repo, command.branch, set_id=set_id, now=now, description=command.description, writes=writes
    )
    _move_head(state, repo, command.branch, branch, set_id=set_id, now=now, writes=writes)
    return writes


def finish_target(state: FsState, repo_name: str, ref: str) -> Commit:
    """The open commit `ref` names, or a UserError saying why it cannot be finished."""
    repo = repo_of(state, repo_name)
    commit = resolve(state, repo_name, ref)
    if commit.finished is not None:
        raise UserError(f"commit {commit.id} is already finished")
    branch = repo.branches.get(commit.branch)
    if commit.origin == AUTO and branch is not None and branch.provenance:
        raise UserError(f"commit {commit.id} is an output commit: its pipeline finishes it")
    return commit


def decide_finish_commit(
    state: FsState,
    command: FinishCommit,
    *,
    commit_id: str,
    seen: tuple[str, ...],
    summary: Summary,
    now: datetime,
) -> Writes:
    commit = finish_target(state, command.repo, command.ref)
    if commit.id != commit_id or commit.layers != seen:
        raise StalePlan(f"commit {commit.id} changed while it was being finished")
    return {command.repo: [_finished(command.repo, commit.id, summary, now, description=command.description)]}


def _finished(
    repo: str,
    commit: str,
    summary: Summary,
    now: datetime,
    *,
    description: str | None = None,
    error: str = "",
) -> CommitFinished:
    return CommitFinished(
        repo=repo,
        commit=commit,
        finished=now,
        size_bytes=summary.size_bytes,
        files=summary.files,
        layers=list(summary.layers),
        description=description,
        error=error,
    )


# --- files -----------------------------------------------------------------------------------------


def write_target(state: FsState, repo_name: str, ref: str) -> WriteTarget:
    """Where a write to `ref` lands: the open commit it names (or its branch's open head), else a
    new commit on the branch `ref` (created if it does not exist)."""
    repo = repo_of(state, repo_name)
    if is_commit_id(ref) and ref not in repo.branches:
        commit = repo.commits.get(ref)
        if commit is None:  # a mistyped id must not become a branch
            raise NotFound(f'commit {ref} not found in repo "{repo.name}"')
        if commit.finished is not None:
            raise UserError(f"commit {ref} is finished; start a new commit")
        return WriteTarget(commit.id, commit.branch, commit.parent, commit.layers)
    if not _NAME.match(ref):
        raise UserError(f'cannot write to "{ref}": name a branch or an open commit')
    branch = _writable_branch(repo, ref)
    if branch is None:
        return WriteTarget(None, ref, None, ())
    head = repo.commits[branch.head]
    if head.finished is None:
        return WriteTarget(head.id, ref, head.parent, head.layers)
    return WriteTarget(None, ref, head.id, head.layers)


def decide_write(
    state: FsState,
    repo_name: str,
    ref: str,
    *,
    planned: WriteTarget,
    layer: str,
    counts: tuple[int, int],
    summary: Summary,
    set_id: str,
    description: str,
    now: datetime,
) -> Writes:
    """Record a layer of changes: in the open commit, or as a new finished commit on the branch."""
    target = write_target(state, repo_name, ref)
    if target != planned:
        raise StalePlan(f"{repo_name}@{ref} moved while the write was being prepared")
    files, uploaded = counts
    writes: Writes = defaultdict(list)
    repo = state.repos[repo_name]
    if target.open_commit is not None:
        writes[repo_name].append(
            FilesChanged(
                repo=repo_name,
                commit=target.open_commit,
                layer=layer,
                files=files,
                bytes=uploaded,
                size_bytes=summary.size_bytes,
                total_files=summary.files,
            )
        )
        return writes
    branch = _new_commit_on(
        repo, target.branch, set_id=set_id, now=now, description=description, writes=writes
    )
    writes[repo_name] += [
        FilesChanged(
            repo=repo_name,
            commit=set_id,
            layer=layer,
            files=files,
            bytes=uploaded,
            size_bytes=summary.size_bytes,
        ),
        CommitFinished(
            repo=repo_name,
            commit=set_id,
            finished=now,
            size_bytes=summary.size_bytes,
            files=summary.files,
            layers=list(summary.layers),
        ),
    ]
    _move_head(state, repo, target.branch, branch, set_id=set_id, now=now, writes=writes)
    return writes


# --- pipeline output commits -----------------------------------------------------------------------


def output_commit(state: FsState, repo_name: str, commit_id: str) -> Commit:
    """The open output commit `commit_id` of `repo_name`, or a UserError saying why it is not one."""
    repo = repo_of(state, repo_name)
    commit = repo.commits.get(commit_id)
    if commit is None:
        raise NotFound(f'commit {commit_id} not found in repo "{repo_name}"')
    branch = repo.branches.get(commit.branch)
    if commit.origin != AUTO or branch is None or not branch.provenance:
        raise UserError(f"commit {commit_id} is not a pipeline's output commit")
    return commit


def decide_finish_output_commit(
    state: FsState, command: FinishOutputCommit, summary: Summary | None, now: datetime
) -> Writes:
    """Finish an output commit with its job's tree (`summary`), or as failed (`summary` None)."""
    commit = output_commit(state, command.repo, command.commit)
    if commit.finished is not None:
        return {}  # finished already: a retried request after its reply was lost
    if summary is None:
        summary = _last_good_output(repo_of(state, command.repo), commit)
    return {command.repo: [_finished(command.repo, commit.id, summary, now, error=command.error)]}


def _last_good_output(repo: Repo, commit: Commit) -> Summary:
    """What a failed output commit holds: the tree of its nearest ancestor finished without an
    error, as it is now (its parent may have been open, or have failed, when it was opened)."""
    parent = repo.commits.get(commit.parent) if commit.parent else None
    while parent is not None and (parent.finished is None or parent.error):
        parent = repo.commits.get(parent.parent) if parent.parent else None
    if parent is None:
        return Summary((), 0, 0)
    return Summary(parent.layers, parent.size_bytes, parent.files)


def decide_open_output_commit(
    state: FsState, command: OpenOutputCommit, set_id: str, now: datetime
) -> Writes:
    repo = repo_of(state, command.repo)
    branch = branch_of(repo, command.branch)
    if not branch.provenance:
        raise UserError(f'branch "{command.branch}" of repo "{repo.name}" is no pipeline output branch')
    writes: Writes = defaultdict(list)
    if repo.commits[branch.head].finished is None:
        return writes  # its newest job has not finished: that job is the new one
    _check_unused(repo, set_id)
    writes[repo.name] += [
        CommitStarted(
            repo=repo.name, commit=set_id, branch=branch.name, parent=branch.head, origin=AUTO, started=now
        ),
        BranchHeadMoved(
            repo=repo.name,
            branch=branch.name,
            head=set_id,
            previous=branch.head,
            reason=BY_PIPELINE,
            moved=now,
        ),
    ]
    propagate(state, repo.name, branch.name, set_id=set_id, now=now, writes=writes)
    return writes
