"""The pipeline system's events, commands, tasks and replies (owned by `services/scheduler`).

Stream `HW_PPS`: one aggregate per pipeline (`hw.pps.evt.pipeline.<name>`: created, updated,
stopped, started, deleted) and one per pipeline's jobs (`hw.pps.evt.job.<name>`: jobs and the
datums they finished). Commands go to `hw.cmd.scheduler.<tag>`.

A job is the run of a pipeline over one output commit: its id is that commit's id, which the file
store opened when an input branch's head moved. Datum tasks go through the `HW_TASKS` work queue
(`hw.task.datum.<pipeline>`) to the workers, which report back with `RecordDatum`. What a datum's
user code printed goes to `HW_LOGS` (`hw.log.<pipeline>.<job>.<datum>`), never through the log
of record.

Large things stay out of events: a job's datum plan and its datum index (datum -> hash, state,
output layer) are blobs in the object store, named by their content, and events carry their keys.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from hw_events.messages import Command, Event, Query
from hw_events.pipeline_spec import PipelineSpec, Transform

SERVICE = "scheduler"

# Pipeline states (`PipelineInfo.state`).
PIPELINE_RUNNING = "running"
PIPELINE_PAUSED = "paused"  # `stop pipeline`: no new jobs start until `start pipeline`

# Job states, as pachctl names them.
CREATED = "created"  # waiting for its inputs to finish and for earlier jobs of its pipeline
STARTING = "starting"
RUNNING = "running"
FINISHING = "finishing"
SUCCESS = "success"
FAILURE = "failure"
KILLED = "killed"
JOB_STATES = (CREATED, STARTING, RUNNING, FINISHING, SUCCESS, FAILURE, KILLED)
FINAL_STATES = (SUCCESS, FAILURE, KILLED)

# Datum states.
DATUM_SUCCESS = "success"
DATUM_FAILED = "failed"
DATUM_RECOVERED = "recovered"  # failed, but err_cmd said the job may go on; retried next job
DATUM_SKIPPED = "skipped"  # same inputs and salt as in the last successful job: output kept
DATUM_PENDING = "pending"  # planned, not reported yet


class JobInput(msgspec.Struct, frozen=True, kw_only=True):
    """One input branch of a job and the commit it read."""

    name: str
    repo: str
    branch: str
    commit: str


# --- events ----------------------------------------------------------------------------------------


class PipelineCreated(Event, frozen=True, kw_only=True, tag="pipeline_created"):
    pipeline: str
    spec: PipelineSpec
    salt: str  # part of every datum's hash: a new salt reprocesses everything
    created: datetime


class PipelineUpdated(Event, frozen=True, kw_only=True, tag="pipeline_updated"):
    pipeline: str
    version: int
    spec: PipelineSpec
    salt: str  # kept, unless the update asked to reprocess
    reprocess: bool = False
    updated: datetime


class PipelineStopped(Event, frozen=True, kw_only=True, tag="pipeline_stopped"):
    pipeline: str
    stopped: datetime


class PipelineStarted(Event, frozen=True, kw_only=True, tag="pipeline_started"):
    pipeline: str
    started: datetime


class PipelineDeleted(Event, frozen=True, kw_only=True, tag="pipeline_deleted"):
    pipeline: str
    deleted: datetime
    keep_repo: bool = False  # otherwise its output repo is deleted too


class JobCreated(Event, frozen=True, kw_only=True, tag="job_created"):
    pipeline: str
    job: str  # = the output commit's id
    version: int  # of the pipeline
    inputs: list[JobInput]
    created: datetime


class JobStarted(Event, frozen=True, kw_only=True, tag="job_started"):
    """The job's datums are planned: `to_run` go to the workers, `skipped` keep earlier outputs."""

    pipeline: str
    job: str
    started: datetime
    plan: str  # object-store key of the datum plan
    base: str | None = None  # the earlier successful job whose outputs skipped datums keep
    total: int
    skipped: int
    to_run: int
    # An earlier job still running when this one started. Datums it also runs (same inputs) wait
    # for it to end, then are skipped or run against the base as it turned out (`JobRebased`);
    # the rest run at once. `to_run` counts those.
    after: str | None = None
    # Mean seconds a datum took in the newest successful job at the start: sizes the batches
    # (kept here so queueing again after a crash cuts the same batches).
    datum_seconds: float = 0.0


class JobRebased(Event, frozen=True, kw_only=True, tag="job_rebased"):
    """Every earlier job has ended: the datums that waited for them are skipped (kept from `base`)
    or run; the job's plan, base and counts are now final. `dropped` ran at once, but `base` had
    them as they are: they are skipped too, their results set aside, as if the jobs ran in order."""

    pipeline: str
    job: str
    rebased: datetime  # its job_timeout counts from here: until now it waited on earlier jobs
    plan: str
    base: str | None = None
    skipped: int
    to_run: int
    dropped: list[str] = msgspec.field(default_factory=list)


class DatumsQueued(Event, frozen=True, kw_only=True, tag="datums_queued"):
    """Every datum task of the job is in the work queue (after a restart, none is queued again)."""

    pipeline: str
    job: str


class DatumFinished(Event, frozen=True, kw_only=True, tag="datum_finished"):
    pipeline: str
    job: str
    datum: str
    state: str  # DATUM_SUCCESS, DATUM_FAILED or DATUM_RECOVERED
    output: str = ""  # layer key of what it left in /pfs/out (success only)
    files: int = 0  # files in the output
    download_bytes: int = 0
    upload_bytes: int = 0
    seconds: float = 0.0
    attempts: int = 1
    reason: str = ""
    worker: str = ""


class DatumsFinished(Event, frozen=True, kw_only=True, tag="datums_finished"):
    """Datums of one job reported together (a worker reports a batch of datums at once): one event
    instead of one per datum. Results already recorded are left out.

    The most numerous and largest events of a long-lived log: its header names the job, so the
    scheduler's replay keeps its body unread until the job's results are needed."""

    about = ("pipeline", "job")

    pipeline: str
    job: str
    results: list[DatumFinished]


class Tally(msgspec.Struct, kw_only=True):
    """Totals of a job's datum results."""

    datums: int = 0
    processed: int = 0
    failed: int = 0
    recovered: int = 0
    download_bytes: int = 0
    upload_bytes: int = 0
    restarts: int = 0
    seconds: float = 0.0


class JobResultsStored(Event, frozen=True, kw_only=True, tag="job_results_stored"):
    """An ended job's datum results are in the object store (`results`, a `DatumResults`): the
    scheduler keeps only their totals in memory, so its state stays small however many jobs ran.

    `tally` carries those totals, so a replay need not decode the results it is about to drop
    (None in events written before it existed: the totals are then counted from the results)."""

    pipeline: str
    job: str
    results: str
    tally: Tally | None = None


class JobFinished(Event, frozen=True, kw_only=True, tag="job_finished"):
    pipeline: str
    job: str
    state: str  # SUCCESS, FAILURE or KILLED
    reason: str = ""
    finished: datetime
    index: str = ""  # object-store key of the datum index (empty unless the job ran)


PpsEvent = (
    PipelineCreated
    | PipelineUpdated
    | PipelineStopped
    | PipelineStarted
    | PipelineDeleted
    | JobCreated
    | JobStarted
    | JobRebased
    | DatumsQueued
    | DatumFinished
    | DatumsFinished
    | JobFinished
    | JobResultsStored
)
EVENTS: tuple[type[Event], ...] = (
    PipelineCreated,
    PipelineUpdated,
    PipelineStopped,
    PipelineStarted,
    PipelineDeleted,
    JobCreated,
    JobStarted,
    JobRebased,
    DatumsQueued,
    DatumFinished,
    DatumsFinished,
    JobFinished,
    JobResultsStored,
)

# --- commands --------------------------------------------------------------------------------------


class CreatePipeline(Command, frozen=True, kw_only=True, tag="create_pipeline"):
    """Create (or with `update`, update) a pipeline from a decoded JSON/YAML spec document."""

    spec: dict[str, object]
    update: bool = False
    reprocess: bool = False  # with update: a new salt, so every datum runs again


class DeletePipeline(Command, frozen=True, kw_only=True, tag="delete_pipeline"):
    pipeline: str
    keep_repo: bool = False


class StopPipeline(Command, frozen=True, kw_only=True, tag="stop_pipeline"):
    pipeline: str


class StartPipeline(Command, frozen=True, kw_only=True, tag="start_pipeline"):
    pipeline: str


class RecordDatum(Command, frozen=True, kw_only=True, tag="record_datum"):
    """A worker's report of one datum (its id makes a repeated report land once)."""

    result: DatumFinished


class RecordDatums(Command, frozen=True, kw_only=True, tag="record_datums"):
    """A worker's report of datums of one job (those already recorded change nothing)."""

    pipeline: str
    job: str
    results: list[DatumFinished]
    pipeline_created: str = ""  # the batch's (see `DatumBatch`): refused for another pipeline


class SettledDatums(Query, frozen=True, kw_only=True, tag="settled_datums"):
    """Which of these datums of the job need not run: they have a result already (the batch's
    last worker died after reporting them), or the job is over (killed by an update or a stop,
    deleted). A worker asks before each batch and runs only the rest. Replies with their ids."""

    pipeline: str
    job: str
    datums: list[str]
    pipeline_created: str = ""  # the batch's (see `DatumBatch`): all are settled in another pipeline


class InspectPipeline(Query, frozen=True, kw_only=True, tag="inspect_pipeline"):
    pipeline: str


class ListPipelines(Query, frozen=True, kw_only=True, tag="list_pipelines"):
    pass


class ListJobs(Query, frozen=True, kw_only=True, tag="list_jobs"):
    pipeline: str = ""  # empty: every pipeline's
    input_commit: str = ""  # only jobs that read this commit (or whose id it is)
    limit: int = 0


class InspectJob(Query, frozen=True, kw_only=True, tag="inspect_job"):
    pipeline: str
    job: str


class WaitJob(Query, frozen=True, kw_only=True, tag="wait_job"):
    """Answer once the job is finished (or after `timeout` seconds, with an error)."""

    pipeline: str
    job: str
    timeout: float = 0


class ListDatums(Query, frozen=True, kw_only=True, tag="list_datums"):
    pipeline: str
    job: str


COMMANDS: tuple[type[Command], ...] = (
    CreatePipeline,
    DeletePipeline,
    StopPipeline,
    StartPipeline,
    RecordDatum,
    RecordDatums,
    SettledDatums,
    InspectPipeline,
    ListPipelines,
    ListJobs,
    InspectJob,
    WaitJob,
    ListDatums,
)

# --- datum plans and tasks -------------------------------------------------------------------------


class DatumFile(msgspec.Struct, frozen=True, array_like=True):
    path: str
    hash: str  # content hash (or, when unknown, the chunk ranges' digest)


class DatumPart(msgspec.Struct, frozen=True, array_like=True):
    """What one input contributes to a datum: the glob match at `path` and the files under it."""

    input: int  # index into the job's inputs
    path: str
    files: list[DatumFile]


class PlannedDatum(msgspec.Struct, frozen=True, array_like=True):
    id: str
    hash: str
    parts: list[DatumPart]
    skip: bool = False
    wait: bool = False  # planned while an earlier job ran these same inputs: run after it ends


class DatumPlan(msgspec.Struct, frozen=True):
    datums: list[PlannedDatum]


class DatumResults(msgspec.Struct, frozen=True):
    """What the workers reported for an ended job's datums (see `JobResultsStored`)."""

    results: list[DatumFinished]


class IndexedDatum(msgspec.Struct, frozen=True, array_like=True):
    hash: str
    state: str
    output: str  # layer key ("" when it left nothing or failed)


class DatumIndex(msgspec.Struct, frozen=True):
    """What a finished job's datums were: the next job's skipping reads it."""

    datums: dict[str, IndexedDatum]
    # The job's merged output (layer keys), so the next job starts from it and reads only the
    # outputs of the datums that changed; `merged` False in indexes written before it was kept.
    tree: list[str] = msgspec.field(default_factory=list)
    merged: bool = False


class TaskInput(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    repo: str
    branch: str
    commit: str
    path: str  # the glob match (a file or directory) the datum mounts
    layers: list[str]  # the input commit's tree


class DatumTask(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a worker needs to run one datum: nothing else is looked up. (Queued as such
    before batches; now the worker's view of one datum of a `DatumBatch`.)"""

    pipeline: str
    job: str
    datum: str
    inputs: list[TaskInput]
    transform: Transform
    image: str = ""
    datum_tries: int = 3
    datum_timeout: float = 0.0  # seconds; 0: none
    report: str = ""  # the id of the report of this datum (`RecordDatum`): one per datum and job


class BatchedDatum(msgspec.Struct, frozen=True, kw_only=True):
    datum: str
    inputs: list[TaskInput]


class DatumBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The work-queue task: datums of one job that one worker runs one after another (so the
    queue, the acks and the reports cost per batch, not per datum)."""

    pipeline: str
    job: str
    datums: list[BatchedDatum]
    transform: Transform
    image: str = ""
    datum_tries: int = 3
    datum_timeout: float = 0.0  # seconds; 0: none
    report: str = ""  # what the ids of this batch's reports are made from: one per batch and job
    # When the pipeline it was queued for was created: a task that outlived its pipeline (queued
    # again by a worker after the pipeline was deleted) runs nothing in one made again by its name.
    pipeline_created: str = ""

    def tasks(self) -> list[DatumTask]:
        return [
            DatumTask(
                pipeline=self.pipeline,
                job=self.job,
                datum=d.datum,
                inputs=d.inputs,
                transform=self.transform,
                image=self.image,
                datum_tries=self.datum_tries,
                datum_timeout=self.datum_timeout,
                report=self.report,
            )
            for d in self.datums
        ]

    @classmethod
    def of(cls, task: DatumTask) -> DatumBatch:
        """A single-datum task, as queued before batches, as a batch of one."""
        return cls(
            pipeline=task.pipeline,
            job=task.job,
            datums=[BatchedDatum(datum=task.datum, inputs=task.inputs)],
            transform=task.transform,
            image=task.image,
            datum_tries=task.datum_tries,
            datum_timeout=task.datum_timeout,
            report=task.report,
        )


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of user code's output, as `hwctl logs` prints it with `-o json`."""

    pipeline: str
    job: str
    datum: str
    worker: str
    stream: str  # "stdout", "stderr", or "worker" for the worker's own messages
    ts: datetime
    message: str
    user: bool = True


# --- replies ---------------------------------------------------------------------------------------


class PipelineInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int
    state: str
    created: datetime
    updated: datetime | None = None
    input: str  # as `list pipeline` shows it, e.g. "data:/*"
    output_branch: str
    description: str = ""
    last_job: str = ""  # the state of its newest job
    last_job_id: str = ""
    spec: PipelineSpec
    salt: str = ""


class JobInfo(msgspec.Struct, frozen=True, kw_only=True):
    pipeline: str
    id: str
    state: str
    version: int
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    reason: str = ""
    inputs: list[JobInput] = msgspec.field(default_factory=list)
    data_total: int = 0
    data_processed: int = 0
    data_skipped: int = 0
    data_failed: int = 0
    data_recovered: int = 0
    download_bytes: int = 0
    upload_bytes: int = 0
    restarts: int = 0
    base: str | None = None


class DatumInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    state: str
    files: list[str]  # input paths, "<input>:<path>"
    seconds: float = 0.0
    attempts: int = 0
    reason: str = ""
