"""The health command every service instance answers, and its reply."""

from __future__ import annotations

from datetime import datetime

import msgspec

from hw_events.messages import Query


class CheckHealth(Query, frozen=True, kw_only=True, tag="check_health"):
    pass


class ReplayProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far one projection has read its stream."""

    stream: str
    applied: int  # stream sequence of the last message read
    pending: int  # messages known to be left to read
    ready: bool  # caught up with the stream as it was at start, now following it live
    read: int = 0  # messages read since this instance started (after a snapshot: only the tail)


class Health(msgspec.Struct, frozen=True, kw_only=True):
    service: str
    instance: str
    pid: int
    version: str
    started: datetime
    ready: bool
    replay: list[ReplayProgress] = msgspec.field(default_factory=list)
