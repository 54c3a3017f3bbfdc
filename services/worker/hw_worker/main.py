"""Entry point of the worker service: `python -m hw_worker`."""

from __future__ import annotations

from hw_events import service, streams, subjects
from hw_worker import domain, handlers

SPEC = service.ServiceSpec(
    name="worker",
    replays=[
        service.Replay(streams.PPS, domain.PIPELINES, subjects=(subjects.PIPELINE_EVENTS,)),
    ],
    setup=handlers.setup,
)


def main() -> None:
    service.main(SPEC)
