"""Entry point of the worker service: `python -m hw_worker`."""

from __future__ import annotations

from hw_events import service, streams, subjects
from hw_worker import domain, supervisor

SPEC = service.ServiceSpec(
    name="worker",
    replays=[service.Replay(streams.PPS, domain.POOLS, subjects=(subjects.PIPELINE_EVENTS,))],
    setup=supervisor.setup,
)


def main() -> None:
    service.main(SPEC)
