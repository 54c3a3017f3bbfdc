"""The triggers service's state and decisions: pure, no I/O.

Branch triggers (size, commits, cron) come with issue 4; for now it reads the file store's
events and its own stream, which is what it will decide from.
"""

from __future__ import annotations

import msgspec

from hw_events.projection import reading_only


class TriggersState(msgspec.Struct, kw_only=True):
    """Nothing is kept yet: this service knows no event types of the streams it reads."""


FS_VIEW = reading_only("triggers-fs", "triggers-fs-0", TriggersState)
OWN = reading_only("triggers", "triggers-0", TriggersState)
