"""Entry point of the worker service: `python -m hw_worker`."""

from __future__ import annotations

from hw_events import service
from hw_worker import handlers

# The worker keeps no state of its own: each task carries everything it needs.
SPEC = service.ServiceSpec(name="worker", setup=handlers.setup)


def main() -> None:
    service.main(SPEC)
