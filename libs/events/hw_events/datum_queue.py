"""The queues datum tasks travel through, from the scheduler to the workers (shared by both): one
durable consumer per pipeline, so each pipeline's workers take only its datums.

Each pipeline has two: its datums, and those to take `first`: the datums of a job that waited for
an earlier job of the pipeline to end, queued once it has. A work queue hands out tasks in the
order they were queued, so without it they would wait behind the datums later jobs queued at once,
and the oldest job (which every later one waits for to finish) would finish last.
"""

from __future__ import annotations

import os

from hw_events import subjects
from hw_events.workqueue import QueueSpec

# The consumer every pipeline shared before pipelines had workers of their own; it is removed,
# since a work queue takes no two consumers whose filters overlap.
SHARED_DURABLE = subjects.consumer_name("worker", "datums")


def datum_subject(pipeline: str, *, first: bool = False) -> str:
    plain = subjects.task_subject("datum", pipeline)
    return f"{plain}.first" if first else plain


def queue_for(pipeline: str, *, first: bool = False) -> QueueSpec:
    # (distinct prefixes: no pipeline's name makes one of these names another pipeline's)
    purpose = f"first-datums-{pipeline}" if first else f"datums-{pipeline}"
    return QueueSpec(
        subject=datum_subject(pipeline, first=first),
        durable=subjects.consumer_name("worker", purpose),
        max_attempts=3,  # deliveries, when workers die or fail before reporting (user code retries itself)
        # Seconds without a heartbeat before a task goes to another worker (a worker that died).
        ack_wait=float(os.environ.get("HW_DATUM_ACK_WAIT", "30")),
        backoff=(1.0, 5.0, 15.0),
    )


def queues_of(pipeline: str) -> tuple[QueueSpec, QueueSpec]:
    """Both of a pipeline's queues (to purge or remove them together)."""
    return queue_for(pipeline), queue_for(pipeline, first=True)
