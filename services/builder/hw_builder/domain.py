"""The builder service's state and decisions: pure, no I/O.

Image builds come later; for now it reads its build events.
"""

from __future__ import annotations

import msgspec

from hw_events.projection import reading_only


class BuilderState(msgspec.Struct, kw_only=True):
    """Nothing is kept yet: this service knows no event types of the streams it reads."""


OWN = reading_only("builder", "builder-0", BuilderState)
