"""The JetStream streams Headwater keeps, and how they are configured.

Event streams are the system of record: kept forever (no age or size limit), never purged or
edited, atomic batches allowed (several events decided together land together or not at all),
direct gets allowed for queries. Work queues delete a message once it is acked. The dead-letter
stream keeps what could not be processed until an operator deals with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nats.js import api
from nats.js.errors import BadRequestError

from hw_events import subjects

DUPLICATE_WINDOW_S = 120.0
_STREAM_NAME_IN_USE = 10058
LOGS_KEPT_S = 7 * 24 * 3600.0


class StreamKind(Enum):
    EVENTS = "events"
    WORK = "work"
    DEAD_LETTERS = "dead_letters"
    LOGS = "logs"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    kind: StreamKind = StreamKind.EVENTS
    description: str = ""
    replicas: int = field(default_factory=lambda: int(os.environ.get("HW_NATS_REPLICAS", "1")))
    duplicate_window: float = DUPLICATE_WINDOW_S

    def config(self) -> api.StreamConfig:
        common: dict[str, Any] = {
            "name": self.name,
            "description": self.description or None,
            "subjects": list(self.subjects),
            "storage": api.StorageType.FILE,
            "num_replicas": self.replicas,
            "duplicate_window": self.duplicate_window,
        }
        if self.kind is StreamKind.EVENTS:
            return api.StreamConfig(
                **common,
                retention=api.RetentionPolicy.LIMITS,
                allow_direct=True,
                allow_atomic=True,
                deny_delete=True,
                deny_purge=True,
            )
        if self.kind is StreamKind.WORK:
            return api.StreamConfig(**common, retention=api.RetentionPolicy.WORK_QUEUE)
        if self.kind is StreamKind.LOGS:
            return api.StreamConfig(
                **common, retention=api.RetentionPolicy.LIMITS, max_age=LOGS_KEPT_S, allow_direct=True
            )
        return api.StreamConfig(**common, retention=api.RetentionPolicy.LIMITS, allow_direct=True)


FS = StreamSpec(subjects.FS_STREAM, (subjects.FS_EVENTS,), description="Headwater file store events")
PPS = StreamSpec(subjects.PPS_STREAM, (subjects.PPS_EVENTS,), description="Headwater pipeline and job events")
BUILD = StreamSpec(subjects.BUILD_STREAM, (subjects.BUILD_EVENTS,), description="Image build events")
# A task queued again after a restart (its `Nats-Msg-Id` is the same) must land once even when the
# restart took long: a day, not two minutes.
TASKS = StreamSpec(
    subjects.TASKS_STREAM,
    (subjects.TASKS,),
    StreamKind.WORK,
    "Work to be done once",
    duplicate_window=86400.0,
)
DLQ = StreamSpec(subjects.DLQ_STREAM, (subjects.DLQ,), StreamKind.DEAD_LETTERS, "Work that could not be done")

LOGS = StreamSpec(subjects.LOGS_STREAM, (subjects.LOGS,), StreamKind.LOGS, "What user code printed")

ALL: tuple[StreamSpec, ...] = (FS, PPS, BUILD, TASKS, DLQ, LOGS)


async def ensure_stream(js: Any, spec: StreamSpec) -> None:
    """Create `spec`'s stream, or bring an existing one's settings up to date."""
    config = spec.config()
    try:
        await js.add_stream(config)
    except BadRequestError as err:
        if err.err_code != _STREAM_NAME_IN_USE:
            raise
        await js.update_stream(config)


async def ensure_streams(js: Any, specs: tuple[StreamSpec, ...] = ALL) -> None:
    for spec in specs:
        await ensure_stream(js, spec)
