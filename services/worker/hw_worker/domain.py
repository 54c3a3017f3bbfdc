"""The worker service's state and decisions: pure, no I/O.

Running datums comes with issue 5; for now it replays the pipeline definitions.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hw_events.projection import Projection


class WorkerState(msgspec.Struct, kw_only=True):
    """Nothing is kept yet: this service knows no event types of the streams it replays."""


def evolve(state: WorkerState, event: Any) -> WorkerState:
    raise TypeError(f"worker cannot apply {type(event).__name__}")


def initial() -> WorkerState:
    return WorkerState()


PIPELINES = Projection(
    name="worker-pipelines", schema="worker-0", state_type=WorkerState, initial=initial, evolve=evolve
)
