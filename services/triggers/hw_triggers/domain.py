"""The triggers service's state and decisions: pure, no I/O.

Branch triggers (size, commits, cron) come with issue 4; for now it replays the file store's
events and its own stream, which is what it will decide from.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hw_events.projection import Projection


class TriggersState(msgspec.Struct, kw_only=True):
    """Nothing is kept yet: this service knows no event types of the streams it replays."""


def evolve(state: TriggersState, event: Any) -> TriggersState:
    raise TypeError(f"triggers cannot apply {type(event).__name__}")


def initial() -> TriggersState:
    return TriggersState()


FS_VIEW = Projection(
    name="triggers-fs", schema="triggers-fs-0", state_type=TriggersState, initial=initial, evolve=evolve
)
OWN = Projection(
    name="triggers", schema="triggers-0", state_type=TriggersState, initial=initial, evolve=evolve
)
