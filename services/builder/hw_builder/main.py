"""Entry point of the builder service: `python -m hw_builder`."""

from __future__ import annotations

from hw_builder import domain, handlers
from hw_events import service, streams

SPEC = service.ServiceSpec(
    name="builder",
    replays=[
        service.Replay(streams.BUILD, domain.OWN),
    ],
    setup=handlers.setup,
)


def main() -> None:
    service.main(SPEC)
