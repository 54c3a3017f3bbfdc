"""The file store's events, commands and replies (owned by `services/fs`).

Stream `HW_FS`, one aggregate subject per repo (`hw.fs.evt.<repo>`): a repo's branches and commits
change together under one optimistic-concurrency check. Commands go to `hw.cmd.fs.<tag>`.

File contents never appear here: `FilesChanged` names a layer (an index in the object store) and
counts what it holds, one event per request however many files it has.

A commit made by a command has the command's id as its id (see `commit_id_for`): a retried command
finds the commit it made, and the commits one command opens across repos (provenance) share it,
which is what a commit set is.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

import msgspec

from hw_events.messages import Command, Event, Query

SERVICE = "fs"
USER = "USER"
AUTO = "AUTO"

# Why a branch's head moved (`BranchHeadMoved.reason`, `BranchCreated.reason`): the triggers service
# evaluates a branch's followers when a commit finished on it or a trigger moved it, not on hand moves.
BY_COMMIT = "commit"  # a new commit on the branch
BY_HAND = "hand"  # `create branch --head`
BY_TRIGGER = "trigger"  # the branch's trigger fired
BY_UPSTREAM = "upstream"  # a branch it follows (provenance) moved
BY_PIPELINE = "pipeline"  # its pipeline asked for a new output commit (an update)

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def is_commit_id(text: str) -> bool:
    return bool(_HEX32.match(text))


def commit_id_for(command_id: str) -> str:
    """The id of the commit (set) a command makes: the command's id when it is 32 hex."""
    if is_commit_id(command_id):
        return command_id
    return hashlib.blake2b(command_id.encode(), digest_size=16).hexdigest()


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """Move this branch to `branch`'s head (same repo) when its conditions hold: any of them, or all
    with `all`. `size` is kept as written (`1MB`); `trigger_conditions` says what it means."""

    branch: str
    size: str = ""
    commits: int = 0
    cron: str = ""
    all: bool = False


# --- events ----------------------------------------------------------------------------------------


class RepoCreated(Event, frozen=True, kw_only=True, tag="repo_created"):
    repo: str
    description: str = ""
    created: datetime


class RepoDeleted(Event, frozen=True, kw_only=True, tag="repo_deleted"):
    repo: str


class CommitStarted(Event, frozen=True, kw_only=True, tag="commit_started"):
    repo: str
    commit: str
    branch: str = ""  # the branch it was made on
    parent: str | None = None
    origin: str = USER
    description: str = ""
    started: datetime


class FilesChanged(Event, frozen=True, kw_only=True, tag="files_changed"):
    """An open commit gained a layer of changes (puts, appends, deletes or copies)."""

    repo: str
    commit: str
    layer: str  # object-store key of the layer
    files: int = 0  # entries in the layer
    bytes: int = 0  # bytes uploaded for it
    size_bytes: int = 0  # the commit's total size with this layer
    total_files: int = 0  # the commit's file count with this layer


class CommitFinished(Event, frozen=True, kw_only=True, tag="commit_finished"):
    repo: str
    commit: str
    finished: datetime
    size_bytes: int
    files: int
    layers: list[str]  # the commit's tree, oldest layer first (compacted when it grew long)
    description: str | None = None  # replaces the description when given
    error: str = ""  # why its pipeline's job failed: the commit holds no new output


class BranchCreated(Event, frozen=True, kw_only=True, tag="branch_created"):
    repo: str
    branch: str
    head: str
    provenance: list[str] = msgspec.field(default_factory=list)  # "repo@branch" it follows
    created: datetime
    trigger: Trigger | None = None
    reason: str = ""  # BY_COMMIT when a write made the branch; empty when created as such


class BranchHeadMoved(Event, frozen=True, kw_only=True, tag="branch_head_moved"):
    repo: str
    branch: str
    head: str
    previous: str | None = None
    reason: str = ""  # BY_COMMIT, BY_HAND, BY_TRIGGER or BY_UPSTREAM (empty in early logs)
    moved: datetime | None = None  # (absent in early logs)


class BranchTriggerSet(Event, frozen=True, kw_only=True, tag="branch_trigger_set"):
    """An existing branch got a trigger (or a new one in place of its old one)."""

    repo: str
    branch: str
    trigger: Trigger
    set_at: datetime


class BranchDeleted(Event, frozen=True, kw_only=True, tag="branch_deleted"):
    repo: str
    branch: str


FsEvent = (
    RepoCreated
    | RepoDeleted
    | CommitStarted
    | FilesChanged
    | CommitFinished
    | BranchCreated
    | BranchHeadMoved
    | BranchDeleted
    | BranchTriggerSet
)
EVENTS: tuple[type[Event], ...] = (
    RepoCreated,
    RepoDeleted,
    CommitStarted,
    FilesChanged,
    CommitFinished,
    BranchCreated,
    BranchHeadMoved,
    BranchDeleted,
    BranchTriggerSet,
)

# --- commands --------------------------------------------------------------------------------------
# A `ref` names a commit: a branch, a commit id, or either with ancestry (`master^2`, `master~3`,
# `master.1`). Where a command writes to a ref, a branch that does not exist yet is created.


class CreateRepo(Command, frozen=True, kw_only=True, tag="create_repo"):
    repo: str
    description: str = ""


class DeleteRepo(Command, frozen=True, kw_only=True, tag="delete_repo"):
    repo: str
    force: bool = False


class CreateBranch(Command, frozen=True, kw_only=True, tag="create_branch"):
    repo: str
    branch: str
    head: str = ""  # a ref in the same repo; empty: a new empty commit (or the current head)
    provenance: list[str] = msgspec.field(default_factory=list)
    trigger: Trigger | None = None  # set (or replaced) on the branch; None keeps what it has


class TriggerMove(msgspec.Struct, frozen=True, kw_only=True):
    """Move `branch` to `head`, which must still be its source's head (after the earlier moves of
    the same command), from `expected`, under the `trigger` it was judged by: otherwise the move
    was decided on old news."""

    branch: str
    head: str
    expected: str
    trigger: Trigger | None = None  # None: whatever trigger the branch has


class FireTriggers(Command, frozen=True, kw_only=True, tag="fire_triggers"):
    """Move triggered branches of one repo together, in order (a chain fires in one pass). Sent by
    the triggers service; refused as a whole if any branch moved or lost its trigger meanwhile."""

    repo: str
    moves: list[TriggerMove]
    seen: int = 0  # the HW_FS sequence the decision was made at: fs decides no earlier


class FinishOutputCommit(Command, frozen=True, kw_only=True, tag="finish_output_commit"):
    """Finish a pipeline's open output commit with exactly the tree `layers` (its job's merged
    output), or, with `error`, as a failed commit that keeps its parent's files."""

    repo: str
    commit: str
    layers: list[str] = msgspec.field(default_factory=list)
    error: str = ""


class OpenOutputCommit(Command, frozen=True, kw_only=True, tag="open_output_commit"):
    """Open a new output commit on a pipeline's output branch (and downstream): a new job over the
    same inputs, as after `update pipeline`. Nothing happens if its head is still open."""

    repo: str
    branch: str


class DeleteBranch(Command, frozen=True, kw_only=True, tag="delete_branch"):
    repo: str
    branch: str
    force: bool = False


class StartCommit(Command, frozen=True, kw_only=True, tag="start_commit"):
    repo: str
    branch: str
    description: str = ""


class FinishCommit(Command, frozen=True, kw_only=True, tag="finish_commit"):
    repo: str
    ref: str
    description: str | None = None


class ModifyFiles(Command, frozen=True, kw_only=True, tag="modify_files"):
    """Apply a layer the client already stored (puts/appends), in the open commit of `ref` or as a
    new finished commit on branch `ref`."""

    repo: str
    ref: str
    layer: str
    files: int = 0
    bytes: int = 0
    description: str = ""


class CopyFiles(Command, frozen=True, kw_only=True, tag="copy_files"):
    src_repo: str
    src_ref: str
    src_path: str
    repo: str
    ref: str
    path: str
    append: bool = False


class DeleteFiles(Command, frozen=True, kw_only=True, tag="delete_files"):
    repo: str
    ref: str
    path: str


class InspectRepo(Query, frozen=True, kw_only=True, tag="inspect_repo"):
    repo: str


class ListRepos(Query, frozen=True, kw_only=True, tag="list_repos"):
    pass


class InspectBranch(Query, frozen=True, kw_only=True, tag="inspect_branch"):
    repo: str
    branch: str


class ListBranches(Query, frozen=True, kw_only=True, tag="list_branches"):
    repo: str


class InspectCommit(Query, frozen=True, kw_only=True, tag="inspect_commit"):
    repo: str
    ref: str


class ListCommits(Query, frozen=True, kw_only=True, tag="list_commits"):
    repo: str
    branch: str = ""  # empty: every commit of the repo
    limit: int = 0


class WaitCommit(Query, frozen=True, kw_only=True, tag="wait_commit"):
    """Answer once the commit is finished (or after `timeout` seconds, with an error)."""

    repo: str
    ref: str
    timeout: float = 0


class ListFiles(Query, frozen=True, kw_only=True, tag="list_files"):
    repo: str
    ref: str
    path: str = "/"


class GlobFiles(Query, frozen=True, kw_only=True, tag="glob_files"):
    repo: str
    ref: str
    pattern: str


class InspectFile(Query, frozen=True, kw_only=True, tag="inspect_file"):
    repo: str
    ref: str
    path: str


class GetFile(Query, frozen=True, kw_only=True, tag="get_file"):
    """Where a file's bytes are: the client reads them from the object store itself."""

    repo: str
    ref: str
    path: str


class DiffFiles(Query, frozen=True, kw_only=True, tag="diff_files"):
    repo: str
    ref: str
    path: str = "/"
    old_repo: str = ""  # empty: the new commit's repo
    old_ref: str = ""  # empty: the new commit's parent


COMMANDS: tuple[type[Command], ...] = (
    CreateRepo,
    DeleteRepo,
    CreateBranch,
    DeleteBranch,
    FireTriggers,
    FinishOutputCommit,
    OpenOutputCommit,
    StartCommit,
    FinishCommit,
    ModifyFiles,
    CopyFiles,
    DeleteFiles,
    InspectRepo,
    ListRepos,
    InspectBranch,
    ListBranches,
    InspectCommit,
    ListCommits,
    WaitCommit,
    ListFiles,
    GlobFiles,
    InspectFile,
    GetFile,
    DiffFiles,
)

# --- replies ---------------------------------------------------------------------------------------


class RepoInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `inspect repo` and `list repo` show (`-o json` prints these fields)."""

    name: str
    created: datetime
    size_bytes: int = 0  # of the head of master
    description: str = ""


class BranchInfo(msgspec.Struct, frozen=True, kw_only=True):
    repo: str
    name: str
    head: str
    trigger: Trigger | None = None
    provenance: list[str] = msgspec.field(default_factory=list)
    created: datetime | None = None


class CommitInfo(msgspec.Struct, frozen=True, kw_only=True):
    repo: str
    branch: str
    id: str
    parent: str | None
    origin: str
    started: datetime
    finished: datetime | None
    size_bytes: int
    description: str = ""
    files: int = 0
    error: str = ""


class FileInfo(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    type: str  # "file" or "dir"
    size_bytes: int
    commit: str = ""


class ChunkRef(msgspec.Struct, frozen=True, array_like=True):
    chunk: str
    offset: int
    length: int


class FileContent(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    size_bytes: int
    commit: str
    chunks: list[ChunkRef]


class FileDiff(msgspec.Struct, frozen=True, kw_only=True):
    added: list[FileInfo]  # in the new commit, not alike in the old
    removed: list[FileInfo]  # in the old commit, not alike in the new
