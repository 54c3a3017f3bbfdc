"""The file store's state and decisions: pure, no I/O.

For now the state is the set of repos; branches, commits and files come next (issue 3).
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from hw_events.errors import AlreadyExists, NotFound, UserError
from hw_events.fs import EVENTS, CreateRepo, DeleteRepo, FsEvent, RepoCreated, RepoDeleted, RepoInfo
from hw_events.messages import Event
from hw_events.projection import Projection

_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")


class Repo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    created: datetime


class FsState(msgspec.Struct, kw_only=True):
    repos: dict[str, Repo] = msgspec.field(default_factory=dict)


def evolve(state: FsState, event: FsEvent) -> FsState:
    """Fold one event into the state (in place: the projector owns the state)."""
    match event:
        case RepoCreated():
            state.repos[event.repo] = Repo(
                name=event.repo, description=event.description, created=event.created
            )
        case RepoDeleted():
            state.repos.pop(event.repo, None)
        case _:
            raise TypeError(f"fs cannot apply {type(event).__name__}")
    return state


PROJECTION = Projection(
    name="fs",
    schema="fs-1",
    state_type=FsState,
    initial=FsState,
    evolve=evolve,
    event_types=EVENTS,
)


def check_name(kind: str, name: str) -> str:
    """`name` if it is a valid repo or branch name, else a UserError saying why."""
    if not _NAME.match(name):
        raise UserError(f'invalid {kind} name "{name}": use only letters, digits, "_" and "-"')
    return name


def decide_create_repo(state: FsState, command: CreateRepo, now: datetime) -> list[Event]:
    check_name("repo", command.repo)
    if command.repo in state.repos:
        raise AlreadyExists(f'repo "{command.repo}" already exists')
    return [RepoCreated(repo=command.repo, description=command.description, created=now)]


def decide_delete_repo(state: FsState, command: DeleteRepo) -> list[Event]:
    check_name("repo", command.repo)
    if command.repo not in state.repos:
        raise NotFound(f'repo "{command.repo}" not found')
    return [RepoDeleted(repo=command.repo)]


def repo_info(state: FsState, name: str) -> RepoInfo:
    repo = state.repos.get(name)
    if repo is None:
        raise NotFound(f'repo "{name}" not found')
    return RepoInfo(name=repo.name, created=repo.created, description=repo.description)


def list_repos(state: FsState) -> list[RepoInfo]:
    """Newest first, as `pachctl list repo` shows them."""
    ordered = sorted(state.repos.values(), key=lambda r: r.created, reverse=True)
    return [repo_info(state, r.name) for r in ordered]
