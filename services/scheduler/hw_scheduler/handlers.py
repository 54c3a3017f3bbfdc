"""The scheduler service's command handlers (none yet: it answers health only)."""

from __future__ import annotations

from collections.abc import Mapping

from hw_events.bus import Handler
from hw_events.messages import Command
from hw_events.service import Runtime


def setup(rt: Runtime) -> Mapping[type[Command], Handler]:
    return {}
