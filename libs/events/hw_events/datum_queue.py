"""The queue datum tasks travel through, from the scheduler to the workers (shared by both)."""

from __future__ import annotations

from hw_events import subjects
from hw_events.workqueue import QueueSpec

DATUMS = QueueSpec(
    subject="hw.task.datum.>",
    durable=subjects.consumer_name("worker", "datums"),
    max_attempts=3,  # deliveries, when workers die or fail before reporting (user code retries itself)
    ack_wait=30.0,
    backoff=(1.0, 5.0, 15.0),
)


def datum_subject(pipeline: str) -> str:
    return subjects.task_subject("datum", pipeline)
