"""The scheduler service's state and decisions: pure, no I/O.

Pipelines, jobs and datums come with issue 5; for now it replays the file store's and the
pipeline system's events, which is what it will decide from.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hw_events.projection import Projection


class SchedulerState(msgspec.Struct, kw_only=True):
    """Nothing is kept yet: this service knows no event types of the streams it replays."""


def evolve(state: SchedulerState, event: Any) -> SchedulerState:
    raise TypeError(f"scheduler cannot apply {type(event).__name__}")


def initial() -> SchedulerState:
    return SchedulerState()


FS_VIEW = Projection(
    name="scheduler-fs", schema="scheduler-fs-0", state_type=SchedulerState, initial=initial, evolve=evolve
)
OWN = Projection(
    name="scheduler", schema="scheduler-0", state_type=SchedulerState, initial=initial, evolve=evolve
)
