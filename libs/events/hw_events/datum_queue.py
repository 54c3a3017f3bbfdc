"""The queue datum tasks travel through, from the scheduler to the workers (shared by both)."""

from __future__ import annotations

import os

from hw_events import subjects
from hw_events.workqueue import QueueSpec

DATUMS = QueueSpec(
    subject="hw.task.datum.>",
    durable=subjects.consumer_name("worker", "datums"),
    max_attempts=3,  # deliveries, when workers die or fail before reporting (user code retries itself)
    # Seconds without a heartbeat before a task goes to another worker (a worker that died).
    ack_wait=float(os.environ.get("HW_DATUM_ACK_WAIT", "30")),
    backoff=(1.0, 5.0, 15.0),
)


def datum_subject(pipeline: str) -> str:
    return subjects.task_subject("datum", pipeline)
