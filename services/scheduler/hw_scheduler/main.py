"""Entry point of the scheduler service: `python -m hw_scheduler`."""

from __future__ import annotations

from hw_events import service, streams
from hw_scheduler import domain, handlers

SPEC = service.ServiceSpec(
    name="scheduler",
    replays=[
        service.Replay(streams.FS, domain.FS_VIEW),
        service.Replay(streams.PPS, domain.PPS),
    ],
    setup=handlers.setup,
)


def main() -> None:
    service.main(SPEC)
