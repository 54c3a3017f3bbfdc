"""The worker service's state and decisions: pure, no I/O.

Running datums comes with issue 5; for now it reads the pipeline definitions.
"""

from __future__ import annotations

import msgspec

from hw_events.projection import reading_only


class WorkerState(msgspec.Struct, kw_only=True):
    """Nothing is kept yet: this service knows no event types of the streams it reads."""


PIPELINES = reading_only("worker-pipelines", "worker-0", WorkerState)
