"""Base types of everything on the log and the bus: events, commands and the envelope around events.

- An `Event` is a fact in the past tense (`RepoCreated`). Subclasses give a stable `tag`
  (`repo_created`); the tag is what identifies the type on the wire, forever.
- A `Command` is an imperative request (`CreateRepo`) with an `id`. The id makes a retried command
  land once: the events it causes carry it, and their `Nats-Msg-Id`s are derived from it.
- An `Envelope` wraps one event as stored on the log with its metadata: event id, aggregate,
  the aggregate's version after this event, time, the causing command and the trace context.

Schemas only grow: add fields with defaults; never rename a tag or change a field's type. A breaking
change is a new tag (`repo_created.v2`) plus an upcaster in the decoder layer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import ClassVar, Generic, TypeVar

import msgspec


def new_id() -> str:
    """A fresh 32-hex id, the same shape as a commit id."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


EVENT_HEADER = "Hw-Event"


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A fact that happened. Subclass with `tag="..."`; field names are the wire names.

    A type whose events readers should be able to route without decoding them names id-like
    fields (no spaces) in `about`: its messages then carry an `Hw-Event` header with the type and
    those fields' values (see `header_of`). Other messages carry none: every header line costs
    every reader of the stream (nats-py parses each, ~0.7 µs a line).
    """

    about: ClassVar[tuple[str, ...]] = ()


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A request one service owns and may reject. `id` makes retries land once."""

    id: str = msgspec.field(default_factory=new_id)


class Query(Command, frozen=True, kw_only=True):
    """A command that only reads. Kept apart so readers know it changes nothing."""


E = TypeVar("E")


class Envelope(msgspec.Struct, Generic[E], frozen=True, kw_only=True):
    """One event as stored on the log.

    `version` is the aggregate's event count after this event (1 for its first event); the stream
    sequence of the message is the position used for optimistic concurrency.
    """

    id: str
    aggregate: str
    version: int
    time: datetime
    command: str = ""
    trace: dict[str, str] = msgspec.field(default_factory=dict)
    event: E


class Version(msgspec.Struct, frozen=True, array_like=True):
    """Where an aggregate stands: the stream sequence of its last event and how many it has.

    `Version.new()` is an aggregate with no events; appending with it as expected version fails if
    anything was written to the aggregate's subject meanwhile.
    """

    seq: int = 0
    count: int = 0

    @classmethod
    def new(cls) -> Version:
        return _NEW


_NEW = Version(0, 0)


class _TypeOnly(msgspec.Struct):
    type: str = ""


class EventTypeHeader(msgspec.Struct):
    """Just enough of an envelope to read its event's type and cause, for events a reader does not know."""

    event: _TypeOnly = msgspec.field(default_factory=_TypeOnly)
    command: str = ""


def header_of(event: Event) -> str:
    """The `Hw-Event` header of a stored event: its type tag, then the values of its `about`
    fields, separated by spaces (`datums_finished pipeline-01 4f2a...`); "" (no header) for a
    type with no `about`, or when a value has a space or a control character (it could not be
    told apart). Readers that route on it must still read the body of messages without it (those
    written before it existed, too)."""
    if not event.about:
        return ""
    values = [str(getattr(event, name)) for name in event.about]
    if any(not value.isprintable() or " " in value for value in values):
        return ""
    return " ".join([tag_of(type(event)), *values])


def tag_of(cls: type[msgspec.Struct]) -> str:
    """The wire tag of a tagged Struct class."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} has no string tag")
    return tag
