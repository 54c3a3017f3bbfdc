"""The scheduler service's state and decisions: pure, no I/O.

Pipelines, jobs and datums come with issue 5; for now it reads the file store's and the
pipeline system's events, which is what it will decide from.
"""

from __future__ import annotations

import msgspec

from hw_events.projection import reading_only


class SchedulerState(msgspec.Struct, kw_only=True):
    """Nothing is kept yet: this service knows no event types of the streams it reads."""


FS_VIEW = reading_only("scheduler-fs", "scheduler-fs-0", SchedulerState)
OWN = reading_only("scheduler", "scheduler-0", SchedulerState)
