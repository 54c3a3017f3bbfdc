"""The scheduler's state and decisions: pure, no I/O.

Two projections:
- `FS_VIEW` folds `HW_FS` into what scheduling needs: branches (head, provenance), commits
  (finished, tree, error) and, for every commit the file store opened on a pipeline's output
  branch, which input commits were the heads of its inputs at that moment. Such a commit is a job.
- `PPS` folds `HW_PPS`: pipelines (spec per version, salt, paused) and their jobs, in order.

Decisions return events per aggregate subject; `handlers` appends them and does the I/O
(reading trees, writing plans, queueing tasks, asking the file store to open and finish commits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, NamedTuple, cast

import msgspec

from hw_events import subjects
from hw_events.errors import AlreadyExists, NotFound, UserError
from hw_events.fs import (
    AUTO,
    BranchCreated,
    BranchDeleted,
    BranchHeadMoved,
    BranchTriggerSet,
    CommitFinished,
    CommitStarted,
    RepoCreated,
    RepoDeleted,
    Trigger,
)
from hw_events.messages import Event, tag_of
from hw_events.pipeline_spec import Input, PfsInput, PipelineSpec, as_trigger, input_name, pfs_inputs
from hw_events.pps import (
    CREATED,
    DATUM_FAILED,
    DATUM_RECOVERED,
    DATUM_SUCCESS,
    FAILURE,
    FINAL_STATES,
    FINISHING,
    KILLED,
    PIPELINE_PAUSED,
    PIPELINE_RUNNING,
    RUNNING,
    STARTING,
    DatumFinished,
    DatumsFinished,
    DatumsQueued,
    JobCreated,
    JobFinished,
    JobInfo,
    JobInput,
    JobRebased,
    JobResultsStored,
    JobStarted,
    PipelineCreated,
    PipelineDeleted,
    PipelineInfo,
    PipelineStarted,
    PipelineStopped,
    PipelineUpdated,
    PlannedDatum,
    PpsEvent,
    Tally,
)
from hw_events.pps import EVENTS as PPS_EVENTS
from hw_events.projection import Projection
from hw_events.trigger_conditions import parse_duration

Writes = dict[str, list[Event]]  # aggregate subject -> events

KILLED_BY_UPDATE = "all jobs killed because pipeline was updated"
KILLED_BY_DELETE = "all jobs killed because pipeline was deleted"
KILLED_BY_STOP = "killed because pipeline was stopped"

# --- the file store, as scheduling sees it ---------------------------------------------------------


class CommitView(msgspec.Struct, kw_only=True):
    branch: str
    origin: str
    finished: bool = False
    layers: tuple[str, ...] = ()
    error: str = ""
    inputs: dict[str, str] | None = None  # output commits: "repo@branch" -> the head it read


class BranchView(msgspec.Struct, kw_only=True):
    head: str
    provenance: tuple[str, ...] = ()
    trigger: Trigger | None = None


class RepoView(msgspec.Struct, kw_only=True):
    created: datetime | None = None
    branches: dict[str, BranchView] = msgspec.field(default_factory=dict)
    commits: dict[str, CommitView] = msgspec.field(default_factory=dict)
    # Output commits still open, in the order opened (a dict as an ordered set): the scheduler's
    # pass looks at these, not at every output commit the repo ever had.
    open_outputs: dict[str, None] = msgspec.field(default_factory=dict)


class FsView(msgspec.Struct, kw_only=True):
    repos: dict[str, RepoView] = msgspec.field(default_factory=dict)


def _heads_of(view: FsView, provenance: tuple[str, ...]) -> dict[str, str]:
    heads = {}
    for source in provenance:
        repo, _, branch = source.partition("@")
        found = view.repos.get(repo)
        if found is not None and branch in found.branches:
            heads[source] = found.branches[branch].head
    return heads


def _note_output(view: FsView, repo: RepoView, commit_id: str, branch: BranchView) -> None:
    commit = repo.commits.get(commit_id)
    if commit is None or commit.origin != AUTO or commit.finished or commit.inputs is not None:
        return
    commit.inputs = _heads_of(view, branch.provenance)
    repo.open_outputs[commit_id] = None


class FilesChangedUnread(Event, frozen=True, kw_only=True, tag="files_changed"):
    """`FilesChanged` as the scheduler reads it: nothing of it. Which files changed does not
    matter to scheduling; reading it as a known type keeps a quarter of `HW_FS` off the slow path
    an unknown type takes (a failed decode, then its header decoded again)."""


def _commit_started(view: FsView, event: CommitStarted) -> None:
    repo = view.repos[event.repo]
    repo.commits[event.commit] = CommitView(branch=event.branch, origin=event.origin)
    branch = repo.branches.get(event.branch)
    if branch is not None and branch.provenance:
        _note_output(view, repo, event.commit, branch)


def _commit_finished(view: FsView, event: CommitFinished) -> None:
    repo = view.repos[event.repo]
    commit = repo.commits[event.commit]
    commit.finished, commit.layers, commit.error = True, tuple(event.layers), event.error
    repo.open_outputs.pop(event.commit, None)


def _branch_head_moved(view: FsView, event: BranchHeadMoved) -> None:
    view.repos[event.repo].branches[event.branch].head = event.head


def _branch_created(view: FsView, event: BranchCreated) -> None:
    repo = view.repos[event.repo]
    branch = BranchView(head=event.head, provenance=tuple(event.provenance), trigger=event.trigger)
    repo.branches[event.branch] = branch
    if branch.provenance:  # its first commit was started before the branch knew its inputs
        _note_output(view, repo, event.head, branch)


def _repo_created(view: FsView, event: RepoCreated) -> None:
    view.repos[event.repo] = RepoView(created=event.created)


def _repo_deleted(view: FsView, event: RepoDeleted) -> None:
    view.repos.pop(event.repo, None)


def _branch_deleted(view: FsView, event: BranchDeleted) -> None:
    view.repos[event.repo].branches.pop(event.branch, None)


def _branch_trigger_set(view: FsView, event: BranchTriggerSet) -> None:
    view.repos[event.repo].branches[event.branch].trigger = event.trigger


def _files_changed(view: FsView, event: FilesChangedUnread) -> None:
    pass  # which files changed does not matter to scheduling


# Looked up by type, not matched: a match tries its cases one after another, and these are all of
# a long log.
_FS_STEPS: dict[type[Event], Callable[[FsView, Any], None]] = {
    CommitStarted: _commit_started,
    CommitFinished: _commit_finished,
    BranchHeadMoved: _branch_head_moved,
    BranchCreated: _branch_created,
    RepoCreated: _repo_created,
    RepoDeleted: _repo_deleted,
    BranchDeleted: _branch_deleted,
    BranchTriggerSet: _branch_trigger_set,
    FilesChangedUnread: _files_changed,
}


def evolve_fs(view: FsView, event: Event) -> FsView:
    step = _FS_STEPS.get(type(event))
    if step is None:
        raise TypeError(f"the scheduler's view of the file store cannot apply {type(event).__name__}")
    step(view, event)
    return view


FS_VIEW = Projection(
    name="scheduler-fs",
    schema="scheduler-fs-4",
    state_type=FsView,
    initial=FsView,
    evolve=evolve_fs,
    event_types=(
        RepoCreated,
        RepoDeleted,
        CommitStarted,
        CommitFinished,
        BranchCreated,
        BranchHeadMoved,
        BranchDeleted,
        BranchTriggerSet,
        FilesChangedUnread,
    ),
)

# --- pipelines and jobs ----------------------------------------------------------------------------


class Pipeline(msgspec.Struct, kw_only=True):
    name: str
    version: int
    spec: PipelineSpec
    salt: str
    created: datetime
    updated: datetime | None = None
    state: str = PIPELINE_RUNNING
    specs: dict[int, PipelineSpec] = msgspec.field(default_factory=dict)  # every version's spec


def tally_of(results: Iterable[DatumFinished]) -> Tally:
    tally = Tally()
    for r in results:
        tally.datums += 1
        tally.processed += r.state == DATUM_SUCCESS
        tally.failed += r.state == DATUM_FAILED
        tally.recovered += r.state == DATUM_RECOVERED
        tally.download_bytes += r.download_bytes
        tally.upload_bytes += r.upload_bytes
        tally.restarts += max(0, r.attempts - 1)
        tally.seconds += r.seconds
    return tally


class DatumsReported(Event, frozen=True, kw_only=True, tag="datums_finished"):
    """`DatumsFinished` as the scheduler's projection reads it: its results left as JSON, decoded
    only if the job still needs them (see `Job.unread`)."""

    pipeline: str
    job: str
    results: msgspec.Raw


class _ReportedResults(msgspec.Struct):
    results: list[DatumFinished]


class _StoredReport(msgspec.Struct):
    """A stored `DatumsFinished` envelope, as far as its results."""

    event: _ReportedResults


_decode_results = msgspec.json.Decoder(list[DatumFinished]).decode
_decode_report = msgspec.json.Decoder(_StoredReport).decode


def _results_of(unread: bytes) -> list[DatumFinished]:
    """Results kept unread: a report's results (a JSON array), or the whole stored report (an
    object) when its header routed it here undecoded (`report_by_header`)."""
    return _decode_results(unread) if unread[:1] == b"[" else _decode_report(unread).event.results


class Job(msgspec.Struct, kw_only=True):
    pipeline: str
    id: str
    version: int
    inputs: list[JobInput]
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    final: str = ""  # SUCCESS, FAILURE or KILLED once finished
    reason: str = ""
    plan: str = ""
    base: str | None = None
    total: int = 0
    skipped: int = 0
    to_run: int = 0
    queued: bool = False
    # The datum results reported so far: `reported` decoded, `unread` as their reports' JSON (see
    # `_results_of`), decoded on first use (`results`). A replay folds millions of results of jobs
    # that ended long ago and whose results were since stored; decoding them only to drop them was
    # most of its cost.
    reported: dict[str, DatumFinished] = msgspec.field(default_factory=dict)
    unread: list[bytes] = msgspec.field(default_factory=list)
    index: str = ""
    after: str | None = None  # an earlier job that ran when this one started (see JobStarted)
    rebased: bool = False  # plan, base and counts final: no datum waits for an earlier job
    running_since: datetime | None = None  # started, or rebased when it waited on earlier jobs
    datum_seconds: float = 0.0  # see JobStarted
    dropped: set[str] = msgspec.field(default_factory=set)  # see JobRebased
    # Once the job ended, its results go to the object store (this key) and only their totals
    # stay: a long-lived scheduler's state (and snapshot) holds jobs, not every datum ever run.
    stored: str = ""
    stored_tally: Tally | None = None

    @property
    def state(self) -> str:
        if self.final:
            return self.final
        if self.started is None:
            return CREATED
        if not self.queued and not self.has_results and not self.queues_waiting:
            return STARTING
        return FINISHING if self.queued and self.all_reported else RUNNING

    @property
    def all_reported(self) -> bool:
        return self.started is not None and self.rebased and len(self.results) >= self.to_run

    @property
    def queues_waiting(self) -> bool:
        """The next datums to queue are those that waited for an earlier job (now ended)."""
        return self.after is not None and self.rebased

    @property
    def tally(self) -> Tally:
        return self.stored_tally if self.stored_tally is not None else tally_of(self.results.values())

    @property
    def results(self) -> dict[str, DatumFinished]:
        """Datum -> its result (the first reported, none of a dropped datum). Decoding what is
        unread changes what the state holds, not what it means, so a read may do it."""
        if self.unread:
            self._read_unread()
        return self.reported

    @property
    def has_results(self) -> bool:
        """Whether any result is held, decoding nothing unless a datum was dropped (every report
        holds a result, but maybe only of dropped datums)."""
        if self.reported:
            return True
        if not self.unread:
            return False
        return bool(self.results) if self.dropped else True

    def record(self, results: Iterable[DatumFinished]) -> None:
        """Add results reported after those already held (read the unread first: the first of a
        datum's results is the one kept)."""
        if self.unread:
            self._read_unread()
        self._add(results)

    def _read_unread(self) -> None:
        unread, self.unread = self.unread, []
        for data in unread:
            try:
                results = _results_of(data)
            except (msgspec.ValidationError, msgspec.DecodeError):
                continue  # not results after all: skipped, as a projector skips a malformed event
            self._add(results)

    def _add(self, results: Iterable[DatumFinished]) -> None:
        for result in results:
            if result.datum not in self.dropped:
                self.reported.setdefault(result.datum, result)


class Deleted(msgspec.Struct, kw_only=True):
    """A deleted pipeline whose output repo is still to be deleted (unless kept)."""

    deleted: datetime
    keep_repo: bool = False


class PpsState(msgspec.Struct, kw_only=True):
    pipelines: dict[str, Pipeline] = msgspec.field(default_factory=dict)
    jobs: dict[str, dict[str, Job]] = msgspec.field(default_factory=dict)  # pipeline -> id -> job
    deleted: dict[str, Deleted] = msgspec.field(default_factory=dict)
    # pipeline -> ids, in order, of the jobs with something left to do: not ended, or ended with
    # results still to store. The scheduler's pass looks at these, not at every job ever run.
    active: dict[str, dict[str, None]] = msgspec.field(default_factory=dict)


def active_jobs(state: PpsState, pipeline: str) -> Iterator[Job]:
    jobs = state.jobs.get(pipeline, {})
    for job_id in state.active.get(pipeline, {}):
        yield jobs[job_id]


def all_active_jobs(state: PpsState) -> Iterator[Job]:
    for pipeline in state.active:
        yield from active_jobs(state, pipeline)


def _settle(state: PpsState, job: Job) -> None:
    if job.final and (job.stored or not job.has_results):
        state.active.get(job.pipeline, {}).pop(job.id, None)


def _datums_reported(job: Job, event: DatumsReported) -> None:
    # bytes, not the Raw: a Raw keeps the whole message alive, and a snapshot (msgpack) cannot
    # hold JSON as it is
    job.unread.append(bytes(event.results))


def _job_started(job: Job, event: JobStarted) -> None:
    job.started, job.plan, job.base = event.started, event.plan, event.base
    job.total, job.skipped, job.to_run = event.total, event.skipped, event.to_run
    job.after, job.rebased = event.after, event.after is None
    job.running_since = event.started if event.after is None else None
    job.datum_seconds = event.datum_seconds


def _job_rebased(job: Job, event: JobRebased) -> None:
    if job.rebased:
        return
    results = job.results if event.dropped else {}  # (what is unread first: the dropped go)
    job.plan, job.base, job.skipped, job.to_run = event.plan, event.base, event.skipped, event.to_run
    job.rebased, job.queued = True, False  # the datums that waited are still to queue
    job.running_since = event.rebased
    job.dropped = set(event.dropped)
    for datum in event.dropped:
        results.pop(datum, None)


def _datums_queued(job: Job, event: DatumsQueued) -> None:
    job.queued = True


def _datum_finished(job: Job, event: DatumFinished) -> None:
    job.record((event,))


def _datums_finished(job: Job, event: DatumsFinished) -> None:
    job.record(event.results)


def _job_finished(job: Job, event: JobFinished) -> None:
    job.final, job.reason, job.finished, job.index = event.state, event.reason, event.finished, event.index


_JobEvent = (
    DatumsReported | JobStarted | JobRebased | DatumsQueued | DatumFinished | DatumsFinished | JobFinished
)
# How each event of a running job changes it. Looked up by type, not matched: these are most of
# the log, and a match tries its cases one after another.
_JOB_STEPS: dict[type[Event], Callable[[Job, Any], None]] = {
    DatumsReported: _datums_reported,
    JobStarted: _job_started,
    JobRebased: _job_rebased,
    DatumsQueued: _datums_queued,
    DatumFinished: _datum_finished,
    DatumsFinished: _datums_finished,
    JobFinished: _job_finished,
}


def evolve(state: PpsState, event: PpsEvent | DatumsReported) -> PpsState:
    step = _JOB_STEPS.get(type(event))
    if step is not None:
        job_event = cast(_JobEvent, event)
        job = state.jobs.get(job_event.pipeline, {}).get(job_event.job)
        if job is not None and not job.final:  # an ended job changes no more (a step decided before)
            step(job, job_event)
            _settle(state, job)
        return state
    match event:
        case PipelineCreated():
            state.pipelines[event.pipeline] = Pipeline(
                name=event.pipeline,
                version=1,
                spec=event.spec,
                salt=event.salt,
                created=event.created,
                specs={1: event.spec},
            )
            state.jobs[event.pipeline] = {}
            state.active[event.pipeline] = {}
            state.deleted.pop(event.pipeline, None)
        case PipelineUpdated():
            pipeline = state.pipelines[event.pipeline]
            pipeline.version, pipeline.spec, pipeline.salt = event.version, event.spec, event.salt
            pipeline.updated = event.updated
            pipeline.specs[event.version] = event.spec
        case PipelineStopped():
            state.pipelines[event.pipeline].state = PIPELINE_PAUSED
        case PipelineStarted():
            state.pipelines[event.pipeline].state = PIPELINE_RUNNING
        case PipelineDeleted():
            state.pipelines.pop(event.pipeline, None)
            state.jobs.pop(event.pipeline, None)
            state.active.pop(event.pipeline, None)
            state.deleted[event.pipeline] = Deleted(deleted=event.deleted, keep_repo=event.keep_repo)
        case JobCreated():
            if event.pipeline not in state.jobs:
                return state
            state.jobs[event.pipeline][event.job] = Job(
                pipeline=event.pipeline,
                id=event.job,
                version=event.version,
                inputs=list(event.inputs),
                created=event.created,
            )
            state.active.setdefault(event.pipeline, {})[event.job] = None
        case JobResultsStored():
            job = state.jobs.get(event.pipeline, {}).get(event.job)
            if job is not None and job.final and not job.stored:
                job.stored = event.results
                job.stored_tally = event.tally if event.tally is not None else tally_of(job.results.values())
                job.reported, job.unread = {}, []
                _settle(state, job)
        case _:
            raise TypeError(f"the scheduler cannot apply {type(event).__name__}")
    return state


def report_by_header(state: PpsState, about: str, body: bytes) -> PpsState:
    """A `DatumsFinished` as replay reads it when its header names the job (`<pipeline> <job>`):
    its body kept unread, as `evolve` keeps a `DatumsReported`'s results. A replay then reads
    nothing of the reports of jobs whose results were stored since: most of a long log.

    Unlike a decoded report, a body that is no report at all (a message corrupted, or written by
    hand under the header) is kept too: until the job's results are read it counts as a report
    (`has_results`), and then it is skipped."""
    pipeline, _, job_id = about.partition(" ")
    job = state.jobs.get(pipeline, {}).get(job_id)
    if job is not None and not job.final:  # (and so nothing to settle)
        job.unread.append(body)
    return state


PPS = Projection(
    name="scheduler",
    schema="scheduler-5",  # (unread reports may be whole stored messages: older versions skip them)
    state_type=PpsState,
    initial=PpsState,
    evolve=evolve,
    event_types=tuple(DatumsReported if t is DatumsFinished else t for t in PPS_EVENTS),
    header_folds={tag_of(DatumsFinished): report_by_header},
)

# --- lookups ---------------------------------------------------------------------------------------


def pipeline_of(state: PpsState, name: str) -> Pipeline:
    pipeline = state.pipelines.get(name)
    if pipeline is None:
        raise NotFound(f'pipeline "{name}" not found')
    return pipeline


def job_of(state: PpsState, pipeline: str, job: str) -> Job:
    found = state.jobs.get(pipeline_of(state, pipeline).name, {}).get(job)
    if found is None:
        raise NotFound(f'job {job} of pipeline "{pipeline}" not found')
    return found


class ReadBranch(NamedTuple):
    input: PfsInput
    branch: str  # what the pipeline reads: the input's branch, or its trigger branch
    trigger: Trigger | None  # on `branch`, following the input's branch


def read_branches(spec: PipelineSpec) -> list[ReadBranch]:
    """Each pfs input, in order, with the branch the pipeline reads. An input with a `trigger`
    reads `<pipeline>-trigger-<n>` (n counts such inputs from 1), a branch of the input repo that
    follows the input's branch when the trigger's conditions hold."""
    out, n = [], 0
    for pfs in pfs_inputs(spec.input):
        trigger = as_trigger(pfs)
        if trigger is None:
            out.append(ReadBranch(pfs, pfs.branch, None))
            continue
        n += 1
        out.append(ReadBranch(pfs, f"{spec.name}-trigger-{n}", trigger))
    return out


def input_sources(spec: PipelineSpec) -> list[str]:
    """The branches a pipeline reads, as provenance: "repo@branch", sorted, once each."""
    return sorted({f"{r.input.repo}@{r.branch}" for r in read_branches(spec)})


def triggers_to_set(state: PpsState, view: FsView) -> Iterator[tuple[Pipeline, str, str, Trigger]]:
    """(pipeline, repo, branch, trigger) for each input trigger branch missing or set otherwise."""
    for pipeline in state.pipelines.values():
        for read in read_branches(pipeline.spec):
            if read.trigger is None:
                continue
            repo = view.repos.get(read.input.repo)
            branch = repo.branches.get(read.branch) if repo is not None else None
            if repo is not None and (branch is None or branch.trigger != read.trigger):
                yield pipeline, read.input.repo, read.branch, read.trigger


def describe_input(spec_input: Input) -> str:
    """How `list pipeline` shows an input: `data:/*`, `cross(a:/*, b:/)`, `union(a:/*, b:/*)`."""
    if spec_input.pfs is not None:
        return f"{spec_input.pfs.repo}:{spec_input.pfs.glob}"
    members = spec_input.cross if spec_input.cross is not None else spec_input.union or []
    kind = "cross" if spec_input.cross is not None else "union"
    return f"{kind}(" + ", ".join(describe_input(m) for m in members) + ")"


def pipeline_info(state: PpsState, pipeline: Pipeline) -> PipelineInfo:
    last = next(reversed(state.jobs.get(pipeline.name, {}).values()), None)
    return PipelineInfo(
        name=pipeline.name,
        version=pipeline.version,
        state=pipeline.state,
        created=pipeline.created,
        updated=pipeline.updated,
        input=describe_input(pipeline.spec.input),
        output_branch=pipeline.spec.output_branch,
        description=pipeline.spec.description,
        last_job=last.state if last else "",
        last_job_id=last.id if last else "",
        spec=pipeline.spec,
        salt=pipeline.salt,
    )


def job_info(job: Job) -> JobInfo:
    tally = job.tally
    return JobInfo(
        pipeline=job.pipeline,
        id=job.id,
        state=job.state,
        version=job.version,
        created=job.created,
        started=job.started,
        finished=job.finished,
        reason=job.reason,
        inputs=job.inputs,
        data_total=job.total,
        data_processed=tally.processed,
        data_skipped=job.skipped,
        data_failed=tally.failed,
        data_recovered=tally.recovered,
        download_bytes=tally.download_bytes,
        upload_bytes=tally.upload_bytes,
        restarts=tally.restarts,
        base=job.base,
    )


def list_jobs(state: PpsState, pipeline: str = "", input_commit: str = "") -> list[JobInfo]:
    """Newest first; with `input_commit`, the jobs that read it or are named after it."""
    if pipeline:
        pipeline_of(state, pipeline)
    out = []
    for name, jobs in state.jobs.items():
        if pipeline and name != pipeline:
            continue
        for job in jobs.values():
            if input_commit and job.id != input_commit and all(i.commit != input_commit for i in job.inputs):
                continue
            out.append(job)
    out.sort(key=lambda j: j.created, reverse=True)
    return [job_info(j) for j in out]


# --- pipeline decisions ----------------------------------------------------------------------------


def _check_inputs(view: FsView, spec: PipelineSpec) -> None:
    for pfs in pfs_inputs(spec.input):
        if pfs.repo not in view.repos:
            raise NotFound(f'pipeline "{spec.name}": input repo "{pfs.repo}" not found; create it first')
        if pfs.repo == spec.name:
            raise UserError(f'pipeline "{spec.name}" cannot read its own output repo')


def decide_create_pipeline(
    state: PpsState, view: FsView, spec: PipelineSpec, *, salt: str, now: datetime
) -> Writes:
    if spec.name in state.pipelines:
        raise AlreadyExists(
            f'pipeline "{spec.name}" already exists; use `hwctl update pipeline` to change it'
        )
    if spec.name in view.repos:
        raise AlreadyExists(
            f'a repo named "{spec.name}" already exists; a pipeline writes to a repo of its own name'
        )
    _check_inputs(view, spec)
    return {
        subjects.pipeline_events(spec.name): [
            PipelineCreated(pipeline=spec.name, spec=spec, salt=salt, created=now)
        ]
    }


def _kill_unfinished(state: PpsState, pipeline: str, reason: str, now: datetime) -> list[Event]:
    return [
        JobFinished(pipeline=pipeline, job=job.id, state=KILLED, reason=reason, finished=now)
        for job in active_jobs(state, pipeline)
        if not job.final
    ]


def decide_update_pipeline(
    state: PpsState, view: FsView, spec: PipelineSpec, *, reprocess: bool, new_salt: str, now: datetime
) -> Writes:
    pipeline = pipeline_of(state, spec.name)
    _check_inputs(view, spec)
    old = pipeline.spec
    if input_sources(spec) != input_sources(old):
        raise UserError(
            f'pipeline "{spec.name}" reads {", ".join(input_sources(old))}; an update cannot change '
            "which branches it reads (yet): delete the pipeline and create it again"
        )
    if spec.output_branch != old.output_branch:
        raise UserError(
            f'pipeline "{spec.name}" writes to branch "{old.output_branch}"; '
            "an update cannot change output_branch"
        )
    return {
        subjects.pipeline_events(spec.name): [
            PipelineUpdated(
                pipeline=spec.name,
                version=pipeline.version + 1,
                spec=spec,
                salt=new_salt if reprocess else pipeline.salt,
                reprocess=reprocess,
                updated=now,
            )
        ],
        subjects.job_events(spec.name): _kill_unfinished(state, spec.name, KILLED_BY_UPDATE, now),
    }


def decide_delete_pipeline(state: PpsState, name: str, now: datetime, *, keep_repo: bool = False) -> Writes:
    pipeline_of(state, name)
    for other in state.pipelines.values():
        if other.name != name and any(p.repo == name for p in pfs_inputs(other.spec.input)):
            raise UserError(f'pipeline "{other.name}" reads the output of "{name}"; delete it first')
    return {
        subjects.job_events(name): _kill_unfinished(state, name, KILLED_BY_DELETE, now),
        subjects.pipeline_events(name): [PipelineDeleted(pipeline=name, deleted=now, keep_repo=keep_repo)],
    }


def decide_stop_pipeline(state: PpsState, name: str, now: datetime) -> Writes:
    """Start no new job, and kill the unfinished ones; `start pipeline` runs one over the inputs
    as they are then."""
    if pipeline_of(state, name).state == PIPELINE_PAUSED:
        return {}
    return {
        subjects.pipeline_events(name): [PipelineStopped(pipeline=name, stopped=now)],
        subjects.job_events(name): _kill_unfinished(state, name, KILLED_BY_STOP, now),
    }


def decide_start_pipeline(state: PpsState, name: str, now: datetime) -> list[Event]:
    if pipeline_of(state, name).state == PIPELINE_RUNNING:
        return []
    return [PipelineStarted(pipeline=name, started=now)]


# --- jobs ------------------------------------------------------------------------------------------


def job_inputs(spec: PipelineSpec, commit: CommitView) -> list[JobInput]:
    """Each pfs input of the spec, in order, with the commit the output commit was opened on."""
    heads = commit.inputs or {}
    return [
        JobInput(
            name=input_name(r.input),
            repo=r.input.repo,
            branch=r.branch,
            commit=heads.get(f"{r.input.repo}@{r.branch}", ""),
        )
        for r in read_branches(spec)
    ]


def new_jobs(state: PpsState, view: FsView) -> Iterator[JobCreated]:
    """A job for every open output commit of a pipeline that has none yet (`created` is left for
    the caller to set)."""
    for name, pipeline in state.pipelines.items():
        repo = view.repos.get(name)
        if repo is None:
            continue
        jobs = state.jobs.get(name, {})
        for commit_id in repo.open_outputs:
            commit = repo.commits.get(commit_id)
            if commit_id in jobs or commit is None:
                continue
            if commit.branch != pipeline.spec.output_branch:
                continue
            yield JobCreated(
                pipeline=name,
                job=commit_id,
                version=pipeline.version,
                inputs=job_inputs(pipeline.spec, commit),
                created=datetime.min,
            )


def input_problem(view: FsView, job: Job) -> tuple[bool, str]:
    """(ready, reason it can never run): ready once every input commit is finished."""
    for given in job.inputs:
        repo = view.repos.get(given.repo)
        commit = repo.commits.get(given.commit) if repo is not None else None
        if not given.commit:
            return True, f"{given.repo}@{given.branch} had no head when output commit {job.id} was opened"
        if commit is None:
            return True, f'input commit {given.commit} of repo "{given.repo}" was deleted'
        if not commit.finished:
            return False, ""
        if commit.error:
            return True, (
                f"unrunnable because the following upstream pipelines failed: {given.repo} "
                f"(its commit {given.commit}: {commit.error})"
            )
    return True, ""


def next_job(state: PpsState, pipeline: str) -> Job | None:
    """The job to start next: the oldest not started (jobs start in order, and need not wait for
    earlier ones to end: see `running_before`)."""
    if state.pipelines[pipeline].state == PIPELINE_PAUSED:
        return None
    for job in active_jobs(state, pipeline):
        if not job.final and job.started is None:
            return job
    return None


def running_before(state: PpsState, pipeline: str, job_id: str) -> Job | None:
    """The newest earlier job not ended yet. A job starting meanwhile runs at once only the datums
    that job does not run too; the others wait, as that job's outcome decides whether they are
    skipped."""
    running = None
    for job in active_jobs(state, pipeline):
        if job.id == job_id:
            break
        if not job.final:
            running = job
    return running


def jobs_to_rebase(state: PpsState) -> Iterator[Job]:
    """Jobs started while an earlier job ran, whose queued datums went out and whose earlier jobs
    have all ended: their waiting datums can now be skipped or run."""
    for pipeline in state.active:
        earlier_running = False
        for job in active_jobs(state, pipeline):
            if not job.final and job.queued and not job.rebased and not earlier_running:
                yield job
            earlier_running = earlier_running or not job.final


def queues(job: Job, planned: PlannedDatum) -> bool:
    """Whether `planned` goes to the workers in the job's next queueing: a datum not skipped and,
    in a job started while an earlier one ran, those not waiting first, the waiting ones after."""
    return not planned.skip and planned.wait == job.queues_waiting


def base_job(state: PpsState, pipeline: str, before: str) -> Job | None:
    """The newest successful job before `before`: skipped datums keep its outputs."""
    seen_before = False
    for job in reversed(state.jobs.get(pipeline, {}).values()):  # (the base is most often near)
        if job.id == before:
            seen_before = True
        elif seen_before and job.final == "success" and job.index:
            return job
    return None


def failure_reason(job: Job) -> str:
    failed = [r for r in job.results.values() if r.state == DATUM_FAILED]
    if not failed:
        return ""
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    first = failed[0]
    why = f": {first.reason}" if first.reason else ""
    return f"datum {first.datum} failed{why}{more}"


def jobs_to_finish(state: PpsState) -> Iterator[Job]:
    for job in all_active_jobs(state):
        if not job.final and job.queued and job.all_reported:
            yield job


def jobs_to_queue(state: PpsState) -> Iterator[Job]:
    for job in all_active_jobs(state):
        if job.started is not None and not job.queued and not job.final:
            yield job


def unfinished_outputs(state: PpsState, view: FsView) -> Iterator[Job]:
    """Finished jobs whose output commit the file store still holds open (a stop in between)."""
    for name, jobs in state.jobs.items():
        repo = view.repos.get(name)
        if repo is None:
            continue
        for commit_id in list(repo.open_outputs):
            job = jobs.get(commit_id)
            commit = repo.commits.get(commit_id)
            if job is not None and job.final in FINAL_STATES and commit is not None and not commit.finished:
                yield job


def timed_out(state: PpsState, now: datetime) -> Iterator[tuple[Job, str]]:
    """Started jobs running longer than their pipeline's `job_timeout`, with the reason to give.
    A job that started while an earlier one ran counts from when every earlier job had ended
    (it could not finish before), as it would have had the jobs run in order."""
    for name in state.active:
        pipeline = state.pipelines.get(name)
        if pipeline is None:
            continue
        for job in active_jobs(state, name):
            spec = pipeline.specs.get(job.version)
            since = job.running_since
            if job.final or since is None or spec is None or not spec.job_timeout:
                continue
            if (now - since).total_seconds() > parse_duration(spec.job_timeout).total_seconds():
                yield job, f"job timed out after {spec.job_timeout} (job_timeout)"


def outdated_jobs(state: PpsState) -> Iterator[Job]:
    """Unfinished jobs of an earlier version than their pipeline's: an update kills them."""
    for name in state.active:
        pipeline = state.pipelines.get(name)
        for job in active_jobs(state, name):
            if pipeline is not None and not job.final and job.version < pipeline.version:
                yield job


def needs_new_output(state: PpsState, view: FsView) -> Iterator[Pipeline]:
    """Running pipelines whose output head is finished but whose inputs were never processed by
    their current spec: updated, with no job of the new version yet; or started again after a
    stop killed their newest job. A new output commit makes that job."""
    for name, pipeline in state.pipelines.items():
        if pipeline.state == PIPELINE_PAUSED:
            continue
        # (jobs take their pipeline's version when made: if any has the current one, the newest has)
        newest = next(reversed(state.jobs.get(name, {}).values()), None)
        updated = pipeline.version > 1 and (newest is None or newest.version != pipeline.version)
        stopped = newest is not None and newest.final == KILLED and newest.reason == KILLED_BY_STOP
        if not (updated or stopped):
            continue
        repo = view.repos.get(name)
        branch = repo.branches.get(pipeline.spec.output_branch) if repo is not None else None
        head = repo.commits.get(branch.head) if repo is not None and branch is not None else None
        if head is not None and head.finished:
            yield pipeline


def repos_to_delete(state: PpsState, view: FsView) -> Iterator[str]:
    """Output repos of deleted pipelines still in fs (not a repo made later under the same name)."""
    for name, tombstone in state.deleted.items():
        repo = view.repos.get(name)
        if tombstone.keep_repo or repo is None or name in state.pipelines:
            continue
        if repo.created is not None and repo.created <= tombstone.deleted:
            yield name


def decide_record_datums(
    state: PpsState, pipeline: str, job_id: str, results: list[DatumFinished]
) -> list[Event]:
    """One event with the results not recorded yet (a batch reported again adds only what is new)."""
    job = state.jobs.get(pipeline, {}).get(job_id)
    if job is None or job.final:
        return []
    new: dict[str, DatumFinished] = {}
    for result in results:
        if (result.pipeline, result.job) != (pipeline, job_id):
            raise UserError(
                f"a report for job {job_id} of pipeline {pipeline} holds a result of job {result.job} "
                f"of pipeline {result.pipeline}"
            )
        if result.state not in (DATUM_SUCCESS, DATUM_FAILED, DATUM_RECOVERED):
            raise UserError(f'datum state "{result.state}" is not one a worker reports')
        if result.datum not in job.results and result.datum not in job.dropped:
            new.setdefault(result.datum, result)
    return [DatumsFinished(pipeline=pipeline, job=job_id, results=list(new.values()))] if new else []


MAX_BATCH = 64  # datums per task at most (one report of a batch stays a small message)
BATCHES_PER_WORKER = 4
BATCH_SECONDS = 2.0
FIRST_BATCH = 16  # datums per task at most while a pipeline has no finished job to time
BATCH_BYTES = 256 * 1024  # a batch's encoded datums at most (NATS takes 1 MiB a message)


def batch_size(to_run: int, workers: int, *, asked: int = 0, seconds_per_datum: float = 0.0) -> int:
    """How many datums go in one task. Asked for (`datum_set_spec.number`): that many, up to
    `MAX_BATCH` (a batch and its report must fit in one NATS message). Otherwise
    enough batches that every worker gets several (a worker that drew quick datums takes more,
    so the job does not wait on one long batch), at most `MAX_BATCH`, and, when the pipeline's
    last job says how long a datum takes, about `BATCH_SECONDS` of work (long datums go one by
    one, where batching saves nothing and would hold datums back behind each other); before it
    can say, at most `FIRST_BATCH`."""
    if asked > 0:
        return min(asked, MAX_BATCH)
    size = min(MAX_BATCH, to_run // (max(1, workers) * BATCHES_PER_WORKER))
    if seconds_per_datum > 0:
        size = min(size, int(BATCH_SECONDS / seconds_per_datum))
    else:  # how long a datum takes is not known yet: not too much in one task
        size = min(size, FIRST_BATCH)
    return max(1, size)


def batches(sizes: list[int], count: int) -> list[range]:
    """Consecutive runs of items (their encoded sizes given) of at most `count` items and, but for
    a single item too big alone, `BATCH_BYTES`."""
    out: list[range] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= count or total + size > BATCH_BYTES):
            out.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        out.append(range(start, len(sizes)))
    return out


def datum_seconds(job: Job | None) -> float:
    """The mean time a datum of this (finished) job took, 0 when none ran."""
    tally = job.tally if job is not None else Tally()
    return tally.seconds / tally.datums if tally.datums else 0.0


def decide_job_failed(job: Job, reason: str, now: datetime) -> list[Event]:
    if job.final:
        return []
    return [JobFinished(pipeline=job.pipeline, job=job.id, state=FAILURE, reason=reason, finished=now)]


def decide_job_started(job: Job, started: JobStarted) -> list[Event]:
    return [] if job.started is not None or job.final else [started]


def decide_rebased(job: Job, rebased: JobRebased) -> list[Event]:
    return [] if job.rebased or job.final else [rebased]


def results_to_store(state: PpsState) -> Iterator[Job]:
    """Ended jobs whose results are still held in memory."""
    for job in all_active_jobs(state):
        if job.final and job.has_results and not job.stored:
            yield job


def decide_results_stored(job: Job, stored: JobResultsStored) -> list[Event]:
    return [stored] if job.final and not job.stored else []


def decide_queued(job: Job) -> list[Event]:
    return [] if job.queued or job.final else [DatumsQueued(pipeline=job.pipeline, job=job.id)]


def decide_job_finished(job: Job, finished: JobFinished) -> list[Event]:
    return [] if job.final else [finished]
