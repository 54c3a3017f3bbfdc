"""Entry point of the fs service: `python -m hw_fs`."""

from __future__ import annotations

from hw_events import service, streams
from hw_fs import domain, handlers

SPEC = service.ServiceSpec(
    name="fs",
    replays=[service.Replay(streams.FS, domain.PROJECTION)],
    setup=handlers.setup,
)


def main() -> None:
    service.main(SPEC)
