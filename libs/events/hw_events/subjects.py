"""Every stream, subject, consumer and bucket name Headwater uses, in one place.

This module imports nothing: `hwctl`'s quick commands use it and must start fast.

Layout of the log (see docs/architecture.md):
- one event stream per bounded context (`HW_FS`, `HW_PPS`, ...), one subject per aggregate;
- commands travel as core NATS request-reply on `hw.cmd.<service>.<command>`, answered by the
  owning service's queue group;
- work that must be done once goes through the `HW_TASKS` work-queue stream, and what could not
  be done ends in `HW_DLQ`.
"""

from __future__ import annotations

import re

SERVICES = ("fs", "triggers", "scheduler", "builder", "worker")

# --- event streams -------------------------------------------------------------------------------

FS_STREAM = "HW_FS"
FS_EVENTS = "hw.fs.evt.>"

PPS_STREAM = "HW_PPS"
PPS_EVENTS = "hw.pps.evt.>"
PIPELINE_EVENTS = "hw.pps.evt.pipeline.>"

# Branch triggers have no stream of their own: a trigger is part of its branch (HW_FS), and a
# firing is a head move there, so the move and the check that the branch did not move meanwhile
# are one conditional append.

BUILD_STREAM = "HW_BUILD"
BUILD_EVENTS = "hw.build.evt.>"

# What user code printed, per datum: kept a week, read by `hwctl logs`, never part of the record.
LOGS_STREAM = "HW_LOGS"
LOGS = "hw.log.>"

# --- work queues -----------------------------------------------------------------------------------

TASKS_STREAM = "HW_TASKS"
TASKS = "hw.task.>"

DLQ_STREAM = "HW_DLQ"
DLQ = "hw.dlq.>"
DLQ_PREFIX = "hw.dlq."

# --- key-value buckets -----------------------------------------------------------------------------

SNAPSHOT_BUCKET = "hw_snapshots"
SNAPSHOT_OBJECTS = "hw_snapshot_blobs"

# --- commands and health ---------------------------------------------------------------------------

COMMAND_PREFIX = "hw.cmd."
HEALTH_PREFIX = "hw.health."

# A subject token may not hold '.', '*', '>' or white space; our names are stricter still.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def token(name: str) -> str:
    """Return `name` if it is safe as one subject token, else raise ValueError naming it."""
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} cannot be used in a subject: only letters, digits, '_' and '-'")
    return name


def repo_events(repo: str) -> str:
    """The aggregate subject of one repo: its branches, commits and files' metadata."""
    return f"hw.fs.evt.{token(repo)}"


def pipeline_events(pipeline: str) -> str:
    return f"hw.pps.evt.pipeline.{token(pipeline)}"


def job_events(pipeline: str) -> str:
    return f"hw.pps.evt.job.{token(pipeline)}"


def log_subject(pipeline: str, job: str = "*", datum: str = "*") -> str:
    """Where the output of `datum` of `job` goes; the defaults are wildcards for reading."""
    job, datum = (part if part == "*" else token(part) for part in (job, datum))
    return f"hw.log.{token(pipeline)}.{job}.{datum}"


def task_subject(kind: str, key: str) -> str:
    """A work item of `kind` (e.g. `datum`, `build`) for `key` (e.g. a pipeline)."""
    return f"hw.task.{token(kind)}.{token(key)}"


def dead_letter_subject(original: str) -> str:
    return DLQ_PREFIX + original


def command_subject(service: str, command: str) -> str:
    """Where `command` (a command's tag, e.g. `create_repo`) for `service` is sent."""
    return f"{COMMAND_PREFIX}{token(service)}.{token(command)}"


def command_wildcard(service: str) -> str:
    return f"{COMMAND_PREFIX}{token(service)}.*"


def queue_group(service: str) -> str:
    """All instances of a service share one queue group: each command reaches exactly one."""
    return f"hw-{token(service)}"


def health_subject(service: str) -> str:
    """Every instance answers here (no queue group), so a scatter-gather sees all replicas."""
    return f"{HEALTH_PREFIX}{token(service)}"


def consumer_name(service: str, purpose: str) -> str:
    """A durable consumer's name: owned by one service, named for what it does."""
    return f"{token(service)}-{token(purpose)}"
