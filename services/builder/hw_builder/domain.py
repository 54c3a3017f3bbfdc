"""The builder service's state and decisions: pure, no I/O.

Image builds come later; for now it replays its build events.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hw_events.projection import Projection


class BuilderState(msgspec.Struct, kw_only=True):
    """Nothing is kept yet: this service knows no event types of the streams it replays."""


def evolve(state: BuilderState, event: Any) -> BuilderState:
    raise TypeError(f"builder cannot apply {type(event).__name__}")


def initial() -> BuilderState:
    return BuilderState()


OWN = Projection(name="builder", schema="builder-0", state_type=BuilderState, initial=initial, evolve=evolve)
