"""The file store's decisions, as given events / when command / then events or error."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from hw_events.errors import AlreadyExists, NotFound, UserError
from hw_events.fs import CreateRepo, DeleteRepo, RepoCreated, RepoDeleted
from hw_fs import domain

T0 = datetime(2026, 11, 21, 5, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def given(*events: object) -> domain.FsState:
    state = domain.FsState()
    for event in events:
        state = domain.evolve(state, event)  # type: ignore[arg-type]
    return state


def test_creating_a_repo() -> None:
    events = domain.decide_create_repo(given(), CreateRepo(repo="images", description="raw"), T0)
    assert events == [RepoCreated(repo="images", description="raw", created=T0)]


def test_creating_a_repo_that_exists_is_refused() -> None:
    with pytest.raises(AlreadyExists, match='repo "images" already exists'):
        domain.decide_create_repo(
            given(RepoCreated(repo="images", created=T0)), CreateRepo(repo="images"), T1
        )


@pytest.mark.parametrize("name", ["a.b", "", "with space", "slash/y", "star*", "ünïcode", "a>b"])
def test_a_repo_name_must_be_letters_digits_dash_underscore(name: str) -> None:
    with pytest.raises(UserError, match=re.escape(f'invalid repo name "{name}"')):
        domain.decide_create_repo(given(), CreateRepo(repo=name), T0)


def test_a_deleted_repo_can_be_created_again() -> None:
    state = given(RepoCreated(repo="images", created=T0), RepoDeleted(repo="images"))
    assert domain.decide_create_repo(state, CreateRepo(repo="images"), T1) == [
        RepoCreated(repo="images", created=T1)
    ]


def test_deleting_a_repo_that_does_not_exist_names_it() -> None:
    with pytest.raises(NotFound, match='repo "nope" not found'):
        domain.decide_delete_repo(given(), DeleteRepo(repo="nope"))


def test_repos_are_listed_newest_first() -> None:
    state = given(
        RepoCreated(repo="old", created=T0),
        RepoCreated(repo="new", description="d", created=T1),
    )
    assert [r.name for r in domain.list_repos(state)] == ["new", "old"]
    assert domain.repo_info(state, "new").description == "d"
