"""File store events as the fs service writes them, for tests of what folds them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hw_events.fs import (
    BY_COMMIT,
    BranchCreated,
    BranchHeadMoved,
    CommitFinished,
    CommitStarted,
    FilesChanged,
)
from hw_events.messages import Event

T0 = datetime(2026, 11, 21, 5, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def cid(n: int) -> str:
    return f"{n:032x}"


def one_off(
    repo: str, branch: str, n: int, parent: int | None, *, size: int = 10, move: bool = True
) -> list[Event]:
    """The events of a `put file` without an open commit: a finished USER commit at the branch head."""
    events: list[Event] = [
        CommitStarted(
            repo=repo, commit=cid(n), branch=branch, parent=cid(parent) if parent else None, started=at(n)
        ),
        FilesChanged(repo=repo, commit=cid(n), layer=f"layers/{n}", files=1, size_bytes=size),
        CommitFinished(
            repo=repo, commit=cid(n), finished=at(n), size_bytes=size, files=1, layers=[f"layers/{n}"]
        ),
    ]
    if move:
        events.append(
            BranchHeadMoved(
                repo=repo, branch=branch, head=cid(n), previous=cid(parent), reason=BY_COMMIT, moved=at(n)
            )
            if parent
            else BranchCreated(repo=repo, branch=branch, head=cid(n), created=at(n), reason=BY_COMMIT)
        )
    return events
