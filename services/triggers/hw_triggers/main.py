"""Entry point of the triggers service: `python -m hw_triggers`."""

from __future__ import annotations

from hw_events import service, streams
from hw_triggers import domain, handlers

SPEC = service.ServiceSpec(
    name="triggers",
    replays=[service.Replay(streams.FS, domain.PROJECTION)],
    setup=handlers.setup,
)


def main() -> None:
    service.main(SPEC)
