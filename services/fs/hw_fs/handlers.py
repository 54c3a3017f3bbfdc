"""The fs service's command handlers: bus messages in, domain decisions, events out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from hw_events import subjects
from hw_events.bus import Handler
from hw_events.fs import CreateRepo, DeleteRepo, InspectRepo, ListRepos, RepoInfo
from hw_events.messages import Command, utcnow
from hw_events.projection import Projector
from hw_events.service import Runtime
from hw_fs import domain
from hw_fs.domain import FsState


def setup(rt: Runtime) -> Mapping[type[Command], Handler]:
    fs = cast(Projector[FsState], rt.projector(domain.PROJECTION.name))

    async def create_repo(command: CreateRepo) -> RepoInfo:
        subject = subjects.repo_events(domain.check_name("repo", command.repo))
        now = utcnow()
        await rt.execute(fs, subject, command.id, lambda s: domain.decide_create_repo(s, command, now))
        return domain.repo_info(fs.state, command.repo)

    async def delete_repo(command: DeleteRepo) -> None:
        subject = subjects.repo_events(domain.check_name("repo", command.repo))
        await rt.execute(fs, subject, command.id, lambda s: domain.decide_delete_repo(s, command))

    async def inspect_repo(query: InspectRepo) -> RepoInfo:
        return domain.repo_info(fs.state, query.repo)

    async def list_repos(_: ListRepos) -> list[RepoInfo]:
        return domain.list_repos(fs.state)

    return {
        CreateRepo: create_repo,
        DeleteRepo: delete_repo,
        InspectRepo: inspect_repo,
        ListRepos: list_repos,
    }
