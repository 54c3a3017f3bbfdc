"""Errors keep their kind, code, message and service across the bus."""

from __future__ import annotations

import pytest

from hw_events.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    HeadwaterError,
    InternalError,
    NotFound,
    ServiceUnavailable,
    TransientError,
    UserError,
    from_wire,
)


@pytest.mark.parametrize(
    "error",
    [
        NotFound('repo "x" not found', service="fs"),
        AlreadyExists('repo "x" already exists', service="fs"),
        UserError("bad glob", code="invalid_glob", service="scheduler"),
        ServiceUnavailable("fs did not answer", service="fs"),
        ConcurrencyConflict("hw.fs.evt.x changed", service="fs"),
        InternalError("bug", service="worker"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_error_survives_the_wire(error: HeadwaterError) -> None:
    back = from_wire(error.to_wire())
    assert type(back) is type(error)
    assert (back.kind, back.code, back.message, back.service) == (
        error.kind,
        error.code,
        error.message,
        error.service,
    )
    assert back.retryable == error.retryable


def test_a_code_this_version_does_not_know_keeps_its_kind() -> None:
    back = from_wire({"kind": "user", "code": "pipeline_cycle", "message": "cycle", "service": "scheduler"})
    assert isinstance(back, UserError)
    assert back.code == "pipeline_cycle"
    assert not back.retryable


def test_a_transient_code_reused_under_another_kind_trusts_the_kind() -> None:
    assert type(from_wire({"kind": "user", "code": "unavailable", "message": "m"})) is UserError
    assert isinstance(from_wire({"kind": "transient", "code": "new_thing", "message": "m"}), TransientError)


def test_garbage_becomes_an_internal_error() -> None:
    assert isinstance(from_wire({}), InternalError)
    assert isinstance(from_wire({"kind": "martian"}), InternalError)
