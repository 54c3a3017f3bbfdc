"""The worker's decisions: pure, no I/O. What user code's environment holds, what it reads on
stdin, what a datum's attempts add up to, and how many worker processes each pipeline wants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from hw_events.messages import Event
from hw_events.pps import (
    DATUM_FAILED,
    DATUM_RECOVERED,
    DatumTask,
    PipelineCreated,
    PipelineDeleted,
    PipelineStarted,
    PipelineStopped,
    PipelineUpdated,
)
from hw_events.projection import Projection

# Settings of Headwater's own processes that user code has no business seeing.
_PRIVATE_PREFIXES = ("HW_", "NATS_", "AWS_SECRET", "MINIO_")


def datum_env(task: DatumTask, pfs: str, base: Mapping[str, str], worker: str) -> dict[str, str]:
    """User code's environment: the worker's (minus Headwater's settings), each input's datum path
    (`$<input>`) and commit (`$<input>_COMMIT`), the ids under Headwater's names and Pachyderm's,
    and the spec's `transform.env` last (it wins)."""
    env = {k: v for k, v in base.items() if not k.startswith(_PRIVATE_PREFIXES)}
    for given in task.inputs:
        env[given.name] = f"{pfs}/{given.name}{'' if given.path == '/' else given.path}"
        env[f"{given.name}_COMMIT"] = given.commit
    ids = {
        "JOB_ID": task.job,
        "DATUM_ID": task.datum,
        "OUTPUT_COMMIT_ID": task.job,  # a job is named after its output commit
    }
    for key, value in ids.items():
        env[f"HW_{key}"] = value
        env[f"PACH_{key}"] = value
    env["HW_PIPELINE"] = env["PPS_PIPELINE_NAME"] = task.pipeline
    env["HW_PFS"] = pfs
    env["HW_WORKER"] = worker
    env.update(task.transform.env)
    return env


def stdin_of(lines: Sequence[str]) -> bytes:
    """`transform.stdin` lines joined by newlines, with a trailing one (as Pachyderm feeds them)."""
    return ("\n".join(lines) + "\n").encode() if lines else b""


def after_failures(err_cmd_ok: bool | None) -> str:
    """Every attempt failed: with `err_cmd` (ran: True/False) it decides; without it, FAILED."""
    return DATUM_RECOVERED if err_cmd_ok else DATUM_FAILED


# --- which worker processes should run ---------------------------------------------------------


class Pools(msgspec.Struct, kw_only=True):
    """How many worker processes each pipeline wants (`parallelism_spec.constant`, at least 1;
    none while stopped), and the pipelines deleted since (whose queued tasks can go)."""

    workers: dict[str, int] = msgspec.field(default_factory=dict)
    paused: set[str] = msgspec.field(default_factory=set)
    deleted: set[str] = msgspec.field(default_factory=set)

    def wanted(self) -> dict[str, int]:
        return {name: n for name, n in self.workers.items() if name not in self.paused}


def evolve_pools(pools: Pools, event: Event) -> Pools:
    match event:
        case PipelineCreated() | PipelineUpdated():
            pools.workers[event.pipeline] = event.spec.workers
            pools.deleted.discard(event.pipeline)
        case PipelineDeleted():
            pools.workers.pop(event.pipeline, None)
            pools.paused.discard(event.pipeline)
            pools.deleted.add(event.pipeline)
        case PipelineStopped():
            pools.paused.add(event.pipeline)
        case PipelineStarted():
            pools.paused.discard(event.pipeline)
        case _:
            pass
    return pools


POOLS = Projection(
    name="worker-pools",
    schema="worker-pools-1",
    state_type=Pools,
    initial=Pools,
    evolve=evolve_pools,
    event_types=(PipelineCreated, PipelineUpdated, PipelineDeleted, PipelineStopped, PipelineStarted),
)


def changes(wanted: Mapping[str, int], running: Mapping[str, int]) -> dict[str, int]:
    """Per pipeline, how many processes to start (positive) or stop (negative)."""
    out = {}
    for name in wanted.keys() | running.keys():
        delta = wanted.get(name, 0) - running.get(name, 0)
        if delta:
            out[name] = delta
    return out
