"""The file store's events, commands and replies (owned by `services/fs`).

Stream `HW_FS`, one aggregate subject per repo (`hw.fs.evt.<repo>`); commands on `hw.cmd.fs.<tag>`.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from hw_events.messages import Command, Event, Query

SERVICE = "fs"

# --- events ----------------------------------------------------------------------------------------


class RepoCreated(Event, frozen=True, kw_only=True, tag="repo_created"):
    repo: str
    description: str = ""
    created: datetime


class RepoDeleted(Event, frozen=True, kw_only=True, tag="repo_deleted"):
    repo: str


FsEvent = RepoCreated | RepoDeleted
EVENTS: tuple[type[Event], ...] = (RepoCreated, RepoDeleted)

# --- commands --------------------------------------------------------------------------------------


class CreateRepo(Command, frozen=True, kw_only=True, tag="create_repo"):
    repo: str
    description: str = ""


class DeleteRepo(Command, frozen=True, kw_only=True, tag="delete_repo"):
    repo: str
    force: bool = False


class InspectRepo(Query, frozen=True, kw_only=True, tag="inspect_repo"):
    repo: str


class ListRepos(Query, frozen=True, kw_only=True, tag="list_repos"):
    pass


COMMANDS: tuple[type[Command], ...] = (CreateRepo, DeleteRepo, InspectRepo, ListRepos)

# --- replies ---------------------------------------------------------------------------------------


class RepoInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `inspect repo` and `list repo` show (`-o json` prints these fields)."""

    name: str
    created: datetime
    size_bytes: int = 0
    description: str = ""
