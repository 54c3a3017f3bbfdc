"""The queues datum tasks travel through, from the scheduler to the workers (shared by both): one
durable consumer per pipeline, so each pipeline's workers take only its datums."""

from __future__ import annotations

import os

from hw_events import subjects
from hw_events.workqueue import QueueSpec

# The consumer every pipeline shared before pipelines had workers of their own; it is removed,
# since a work queue takes no two consumers whose filters overlap.
SHARED_DURABLE = subjects.consumer_name("worker", "datums")


def datum_subject(pipeline: str) -> str:
    return subjects.task_subject("datum", pipeline)


def queue_for(pipeline: str) -> QueueSpec:
    return QueueSpec(
        subject=datum_subject(pipeline),
        durable=subjects.consumer_name("worker", f"datums-{pipeline}"),
        max_attempts=3,  # deliveries, when workers die or fail before reporting (user code retries itself)
        # Seconds without a heartbeat before a task goes to another worker (a worker that died).
        ack_wait=float(os.environ.get("HW_DATUM_ACK_WAIT", "30")),
        backoff=(1.0, 5.0, 15.0),
    )
