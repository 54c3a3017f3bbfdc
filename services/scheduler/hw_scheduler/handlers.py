"""The scheduler's command handlers and its loop: bus messages in, storage reads, events out.

Commands create, update, stop, start and delete pipelines, take workers' datum reports and answer
queries. The loop (`Scheduling`) moves every job forward from what the log says, one idempotent
step at a time, so a scheduler stopped at any point carries on from the log when it starts again:

    open output commit (fs) -> JobCreated -> plan datums -> JobStarted -> queue tasks -> DatumsQueued
    -> workers report (RecordDatum -> DatumFinished) -> merge outputs -> finish commit (fs) -> JobFinished

Every step checks the state it is about to change and has an id derived from what it does, so
doing a step twice (a restart, a retry) lands once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import msgspec
from nats.js.errors import NotFoundError

from hw_events import datum_queue, fs, streams, subjects
from hw_events.bus import Handler
from hw_events.errors import (
    AlreadyExists,
    HeadwaterError,
    NotFound,
    ServiceUnavailable,
    TransientError,
    UserError,
)
from hw_events.messages import Command, Event, utcnow
from hw_events.pipeline_spec import PipelineSpec, parse_pipeline_spec, pfs_inputs
from hw_events.pps import (
    DATUM_PENDING,
    DATUM_SKIPPED,
    DATUM_SUCCESS,
    KILLED,
    SUCCESS,
    BatchedDatum,
    CreatePipeline,
    DatumBatch,
    DatumFinished,
    DatumIndex,
    DatumInfo,
    DatumPlan,
    DatumResults,
    DeletePipeline,
    IndexedDatum,
    InspectJob,
    InspectPipeline,
    JobFinished,
    JobInfo,
    JobRebased,
    JobResultsStored,
    JobStarted,
    ListDatums,
    ListJobs,
    ListPipelines,
    PipelineInfo,
    RecordDatum,
    RecordDatums,
    SettledDatums,
    StartPipeline,
    StopPipeline,
    TaskInput,
    WaitJob,
)
from hw_events.projection import Projector
from hw_events.service import Runtime
from hw_events.trigger_conditions import parse_duration
from hw_events.workqueue import WorkQueue
from hw_scheduler import datums, domain
from hw_scheduler.blobs import JobBlobs
from hw_scheduler.domain import FsView, Job, PpsState
from hw_storage.blobs import BlobNotFound
from hw_storage.config import open_store

WAIT_AT_MOST = 60.0  # seconds one wait_job request waits; clients ask again
RETRY_AFTER = 0.5  # seconds before a step that failed is tried again
LOOK_AGAIN = 1.0  # seconds between passes when nothing wakes the loop


def step_id(*parts: str) -> str:
    """A command id for one step of one job: the same step always has the same id."""
    return fs.commit_id_for(":".join(parts))


def job_step(state: PpsState, step: str, pipeline: str, job: str) -> str:
    """A job step's id. A job id may come back in a pipeline deleted and made again under the same
    name (a head moved back to an old commit), so the pipeline's creation time is part of it."""
    return step_id(step, pipeline, state.pipelines[pipeline].created.isoformat(), job)


class Scheduler:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pps = cast(Projector[PpsState], rt.projector(domain.PPS.name))
        self.fs = cast(Projector[FsView], rt.projector(domain.FS_VIEW.name))
        self.blobs = JobBlobs(open_store())
        self.log = rt.log.bind(component="scheduling")
        self.poke = asyncio.Event()

    # --- pipelines ---------------------------------------------------------------------------------

    async def create_pipeline(self, command: CreatePipeline) -> PipelineInfo:
        spec = parse_pipeline_spec(command.spec)
        now = utcnow()
        if command.update:
            if spec.name not in self.pps.state.pipelines:
                if command.reprocess:
                    domain.pipeline_of(self.pps.state, spec.name)  # NotFound: nothing to reprocess
                return await self._create(command, spec)
            new_salt = uuid.uuid4().hex
            await self.rt.execute_across(
                self.pps,
                command.id,
                lambda s: domain.decide_update_pipeline(
                    s, self.fs.state, spec, reprocess=command.reprocess, new_salt=new_salt, now=now
                ),
            )
            await self.ensure_triggers()
            await self.follow_updates()
            self.poke.set()
            return domain.pipeline_info(self.pps.state, domain.pipeline_of(self.pps.state, spec.name))
        return await self._create(command, spec)

    async def _create(self, command: CreatePipeline, spec: PipelineSpec) -> PipelineInfo:
        salt, now = uuid.uuid4().hex, utcnow()
        await self.rt.execute_across(
            self.pps,
            command.id,
            lambda s: domain.decide_create_pipeline(s, self.fs.state, spec, salt=salt, now=now),
        )
        await self.ensure_output(domain.pipeline_of(self.pps.state, spec.name))
        self.poke.set()
        return domain.pipeline_info(self.pps.state, domain.pipeline_of(self.pps.state, spec.name))

    async def ensure_output(self, pipeline: domain.Pipeline) -> None:
        """The pipeline's output repo and branch in fs, following its input branches (created empty
        when missing, as a user would expect of a pipeline on a new repo)."""
        spec, view = pipeline.spec, self.fs.state
        made = pipeline.created.isoformat()  # a pipeline made again under the same name is new
        for read in domain.read_branches(spec):
            repo = read.input.repo
            branch = read.trigger.branch if read.trigger is not None else read.branch
            if repo in view.repos and branch not in view.repos[repo].branches:
                await self._fs(
                    fs.CreateBranch(
                        id=step_id("input-branch", spec.name, made, repo, branch), repo=repo, branch=branch
                    )
                )
            if (
                read.trigger is not None
                and read.branch in self.fs.state.repos.get(repo, domain.RepoView()).branches
            ):
                # Left by an earlier pipeline of this name: a new pipeline starts at its source's head.
                await self._fs(
                    fs.CreateBranch(
                        id=step_id("input-trigger-restart", spec.name, made, repo, read.branch),
                        repo=repo,
                        branch=read.branch,
                        head=read.trigger.branch,
                        trigger=read.trigger,
                    )
                )
        await self.ensure_triggers()
        if spec.name not in view.repos:
            await self._fs(fs.CreateRepo(id=step_id("output-repo", spec.name, made), repo=spec.name))
        if spec.output_branch not in self.fs.state.repos.get(spec.name, domain.RepoView()).branches:
            await self._fs(
                fs.CreateBranch(
                    id=step_id("output-branch", spec.name, made),
                    repo=spec.name,
                    branch=spec.output_branch,
                    provenance=domain.input_sources(spec),
                )
            )

    async def ensure_triggers(self) -> None:
        """Input trigger branches exist with the trigger their pipeline's spec gives (an update
        sets the new one on the same branch; deleting the pipeline leaves the branch)."""
        for pipeline, repo, branch, trigger in list(domain.triggers_to_set(self.pps.state, self.fs.state)):
            made = pipeline.created.isoformat()
            key = step_id("input-trigger", pipeline.name, made, str(pipeline.version), repo, branch)
            view = self.fs.state.repos[repo]
            # A new trigger branch starts where its source is: what is there now is processed at
            # once, and the trigger's conditions count what comes after.
            head = trigger.branch if branch not in view.branches and trigger.branch in view.branches else ""
            try:
                await self._fs(fs.CreateBranch(id=key, repo=repo, branch=branch, head=head, trigger=trigger))
            except UserError as err:  # (the spec's checks should have caught it) stall no other
                self.log.error(
                    "input_trigger_refused", pipeline=pipeline.name, branch=branch, error=err.message
                )

    async def _fs(self, command: Command) -> None:
        """Send a command to fs; one that finds its work done (a concurrent step) is fine. Returns
        once this service's view of the file store has seen the result."""
        with contextlib.suppress(AlreadyExists):
            await self.rt.bus.request(fs.SERVICE, command)
        await self._catch_up_fs()

    async def _catch_up_fs(self) -> None:
        last = await self.rt.store.last_sequence(self.fs.stream.name, self.fs.subjects)
        await self.fs.wait_for(last)

    async def delete_pipeline(self, command: DeletePipeline) -> None:
        """Kill its jobs and finish their output commits first (none is left open for `wait commit`),
        then delete the pipeline; the loop deletes its output repo (also after a stop in between)."""
        name, now = command.pipeline, utcnow()
        domain.decide_delete_pipeline(self.pps.state, name, now)  # refuses what cannot be deleted
        await self.rt.execute(
            self.pps,
            subjects.job_events(name),
            step_id("kill-for-delete", command.id),
            lambda s: domain.decide_delete_pipeline(s, name, now)[subjects.job_events(name)],
        )
        await self.finish_failed_outputs()
        # Its queued datums go now, before a pipeline made again under the name could take them.
        for queue in datum_queue.queues_of(name):
            with contextlib.suppress(NotFoundError):
                await self.rt.js.purge_stream(streams.TASKS.name, subject=queue.subject)
        await self.rt.execute(
            self.pps,
            subjects.pipeline_events(name),
            command.id,
            lambda s: domain.decide_delete_pipeline(s, name, now, keep_repo=command.keep_repo)[
                subjects.pipeline_events(name)
            ],
        )
        await self.delete_outputs()

    async def delete_outputs(self) -> None:
        for name in list(domain.repos_to_delete(self.pps.state, self.fs.state)):
            deleted = self.pps.state.deleted[name].deleted.isoformat()
            with contextlib.suppress(NotFound):
                await self._fs(
                    fs.DeleteRepo(id=step_id("delete-output", name, deleted), repo=name, force=True)
                )

    async def follow_updates(self) -> None:
        """Kill jobs of earlier versions, and give an updated pipeline a job of its new version."""
        now = utcnow()
        for job in list(domain.outdated_jobs(self.pps.state)):
            killed = JobFinished(
                pipeline=job.pipeline, job=job.id, state=KILLED, reason=domain.KILLED_BY_UPDATE, finished=now
            )
            await self._job_event(
                job, "outdated", functools.partial(domain.decide_job_finished, finished=killed)
            )
        await self.finish_failed_outputs()
        for pipeline in list(domain.needs_new_output(self.pps.state, self.fs.state)):
            # Once per version and newest job: asked again after a restart, it opens one commit.
            newest = next(reversed(self.pps.state.jobs.get(pipeline.name, {})), "")
            opened = step_id(
                "open-output", pipeline.name, pipeline.created.isoformat(), str(pipeline.version), newest
            )
            await self._fs(
                fs.OpenOutputCommit(id=opened, repo=pipeline.name, branch=pipeline.spec.output_branch)
            )

    async def stop_pipeline(self, command: StopPipeline) -> PipelineInfo:
        now = utcnow()
        await self.rt.execute_across(
            self.pps, command.id, lambda s: domain.decide_stop_pipeline(s, command.pipeline, now)
        )
        await self.finish_failed_outputs()
        return domain.pipeline_info(self.pps.state, domain.pipeline_of(self.pps.state, command.pipeline))

    async def start_pipeline(self, command: StartPipeline) -> PipelineInfo:
        now = utcnow()
        await self.rt.execute(
            self.pps,
            subjects.pipeline_events(command.pipeline),
            command.id,
            lambda s: domain.decide_start_pipeline(s, command.pipeline, now),
        )
        await self.follow_updates()
        self.poke.set()
        return domain.pipeline_info(self.pps.state, domain.pipeline_of(self.pps.state, command.pipeline))

    async def inspect_pipeline(self, query: InspectPipeline) -> PipelineInfo:
        return domain.pipeline_info(self.pps.state, domain.pipeline_of(self.pps.state, query.pipeline))

    async def list_pipelines(self, _: ListPipelines) -> list[PipelineInfo]:
        state = self.pps.state
        infos = [domain.pipeline_info(state, p) for p in state.pipelines.values()]
        return sorted(infos, key=lambda p: p.created, reverse=True)

    # --- jobs and datums ---------------------------------------------------------------------------

    async def record_datum(self, command: RecordDatum) -> None:
        """A report of one datum, as workers sent before batches: a report of one."""
        result = command.result
        await self.record_datums(
            RecordDatums(id=command.id, pipeline=result.pipeline, job=result.job, results=[result])
        )

    async def record_datums(self, command: RecordDatums) -> None:
        job = self.pps.state.jobs.get(command.pipeline, {}).get(command.job)
        if job is None or job.final:
            return  # the job is over (killed, deleted): the report changes nothing
        if not self._same_pipeline(command.pipeline, command.pipeline_created):
            return  # run for a pipeline deleted since, with its transform: not this one's result
        if job.plan:
            planned = await asyncio.to_thread(self.blobs.plan_ids, job.plan)
            strangers = [r.datum for r in command.results if r.datum not in planned]
            if strangers:
                raise UserError(f"datum {strangers[0]} is not a datum of job {command.job}")
        await self.rt.execute(
            self.pps,
            subjects.job_events(command.pipeline),
            command.id,
            lambda s: domain.decide_record_datums(s, command.pipeline, command.job, command.results),
        )
        self.poke.set()

    async def settled_datums(self, query: SettledDatums) -> list[str]:
        job = self.pps.state.jobs.get(query.pipeline, {}).get(query.job)
        if job is None or job.final:  # (a replayed scheduler knows every job it ever queued)
            return list(query.datums)
        if not self._same_pipeline(query.pipeline, query.pipeline_created):
            return list(query.datums)  # queued for a pipeline deleted since: not this one's work
        return [datum for datum in query.datums if datum in job.results or datum in job.dropped]

    def _same_pipeline(self, name: str, created: str) -> bool:
        """Whether a task that says when its pipeline was created is of the pipeline now so named
        (one that does not say was queued before tasks said: taken as the same)."""
        return not created or created == self.pps.state.pipelines[name].created.isoformat()

    async def list_jobs(self, query: ListJobs) -> list[JobInfo]:
        jobs = domain.list_jobs(self.pps.state, query.pipeline, query.input_commit)
        return jobs[: query.limit] if query.limit else jobs

    async def inspect_job(self, query: InspectJob) -> JobInfo:
        return domain.job_info(domain.job_of(self.pps.state, query.pipeline, query.job))

    async def wait_job(self, query: WaitJob) -> JobInfo:
        domain.job_of(self.pps.state, query.pipeline, query.job)

        def over(state: PpsState) -> bool:
            job = state.jobs.get(query.pipeline, {}).get(query.job)
            return job is None or bool(job.final)

        patience = min(query.timeout or WAIT_AT_MOST, WAIT_AT_MOST)
        await self.pps.wait_until(over, patience, f"job {query.job} to finish")
        return domain.job_info(domain.job_of(self.pps.state, query.pipeline, query.job))

    async def list_datums(self, query: ListDatums) -> list[DatumInfo]:
        job = domain.job_of(self.pps.state, query.pipeline, query.job)
        if not job.plan:
            return []
        plan = await asyncio.to_thread(self.blobs.plan, job.plan)
        results = job.results
        if job.stored:
            stored = await asyncio.to_thread(self.blobs.results, job.stored)
            results = {r.datum: r for r in stored.results}
        out = []
        for planned in plan.datums:
            result = results.get(planned.id)
            state = DATUM_SKIPPED if planned.skip else result.state if result else DATUM_PENDING
            out.append(
                DatumInfo(
                    id=planned.id,
                    state=state,
                    files=[f"{job.inputs[p.input].name}:{p.path}" for p in planned.parts],
                    seconds=result.seconds if result else 0.0,
                    attempts=result.attempts if result else 0,
                    reason=result.reason if result else "",
                )
            )
        return out

    # --- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        while not self.rt.stopping.is_set():
            marks = (self.pps.applied, self.fs.applied)
            self.poke.clear()
            try:
                await self.step()
            except HeadwaterError as err:
                self.log.warning("scheduling_postponed", error=err.message)
                await self._sleep(RETRY_AFTER)
                continue
            except Exception:  # a bug must not end scheduling for good: say so, go on
                self.log.exception("scheduling_failed")
                await self._sleep(RETRY_AFTER)
                continue
            if (self.pps.applied, self.fs.applied) == marks:
                await self._wait_for_news(marks)

    async def step(self) -> None:
        await self.ensure_outputs()
        await self.create_jobs()
        await self.follow_updates()
        await self.delete_outputs()
        now = utcnow()
        for job, reason in list(domain.timed_out(self.pps.state, now)):
            killed = JobFinished(pipeline=job.pipeline, job=job.id, state=KILLED, reason=reason, finished=now)
            await self._job_event(
                job, "timeout", functools.partial(domain.decide_job_finished, finished=killed)
            )
        await self.finish_failed_outputs()
        for name in list(self.pps.state.pipelines):
            waiting = domain.next_job(self.pps.state, name)
            if waiting is not None:
                await self.guarded(waiting, self.start_job)
        for job in list(domain.jobs_to_queue(self.pps.state)):
            await self.guarded(job, self.queue_job)
        for job in list(domain.jobs_to_rebase(self.pps.state)):
            await self.guarded(job, self.rebase_job)
        for job in list(domain.jobs_to_finish(self.pps.state)):
            await self.guarded(job, self.finish_job)
        for job in list(domain.results_to_store(self.pps.state)):
            await self.guarded(job, self.store_results)

    async def guarded(self, job: Job, work: Callable[[Job], Awaitable[None]]) -> None:
        """Do one step of one job, so that a job that cannot go on stops no other. What can never
        work (its inputs or their files are gone) fails the job, saying why; a transient failure
        is tried again on a later pass."""
        try:
            await work(job)
        except (UserError, KeyError, BlobNotFound) as err:
            why = err.message if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            self.log.error("job_cannot_go_on", pipeline=job.pipeline, job=job.id, error=why)
            reason = f"cannot go on: {why}"
            await self._job_event(job, "broken", lambda j: domain.decide_job_failed(j, reason, utcnow()))
            await self.finish_failed_outputs()
        except TransientError as err:
            self.log.warning("job_step_postponed", pipeline=job.pipeline, job=job.id, error=err.message)

    async def ensure_outputs(self) -> None:
        await self.ensure_triggers()
        for pipeline in list(self.pps.state.pipelines.values()):
            repo = self.fs.state.repos.get(pipeline.name)
            if repo is None or pipeline.spec.output_branch not in repo.branches:
                await self.ensure_output(pipeline)

    async def create_jobs(self) -> None:
        for created in list(domain.new_jobs(self.pps.state, self.fs.state)):
            event = msgspec.structs.replace(created, created=utcnow())

            def decide(s: PpsState, event: Any = event) -> list[Event]:
                pipeline = s.pipelines.get(event.pipeline)
                if pipeline is None or event.job in s.jobs.get(event.pipeline, {}):
                    return []
                return [msgspec.structs.replace(event, version=pipeline.version)]

            await self.rt.execute(
                self.pps,
                subjects.job_events(created.pipeline),
                job_step(self.pps.state, "job", created.pipeline, created.job),
                decide,
            )
            self.log.info("job_created", pipeline=created.pipeline, job=created.job)

    async def finish_failed_outputs(self) -> None:
        """Output commits of failed and killed jobs are finished with the reason as their error."""
        for job in list(domain.unfinished_outputs(self.pps.state, self.fs.state)):
            if job.final == SUCCESS:
                continue  # finish_job finishes those, with their output
            await self._fs(
                fs.FinishOutputCommit(
                    id=job_step(self.pps.state, "output-failed", job.pipeline, job.id),
                    repo=job.pipeline,
                    commit=job.id,
                    error=f"{job.final}: {job.reason}" if job.reason else job.final,
                )
            )

    async def start_job(self, job: Job) -> None:
        ready, problem = domain.input_problem(self.fs.state, job)
        if not ready:
            return
        # With an earlier job still running, the base is not known yet: what that job also runs
        # waits for it, the rest runs now.
        after = domain.running_before(self.pps.state, job.pipeline, job.id)
        if problem:
            if after is None:  # (else it fails once the earlier jobs ended: jobs end in order)
                await self._job_event(
                    job, "unrunnable", lambda j: domain.decide_job_failed(j, problem, utcnow())
                )
            return
        pipeline = self.pps.state.pipelines[job.pipeline]
        spec = pipeline.specs[job.version]
        newest_success = domain.base_job(self.pps.state, job.pipeline, job.id)
        base = newest_success if after is None else None
        planned = await asyncio.to_thread(
            self._plan, job, spec, pipeline.salt, base.index if base else "", after.plan if after else ""
        )
        skipped = sum(1 for d in planned.datums if d.skip)
        waiting = sum(1 for d in planned.datums if d.wait)
        key = await asyncio.to_thread(self.blobs.save_plan, planned)
        started = JobStarted(
            pipeline=job.pipeline,
            job=job.id,
            started=utcnow(),
            plan=key,
            base=base.id if base else None,
            total=len(planned.datums),
            skipped=skipped,
            to_run=len(planned.datums) - skipped - waiting,
            after=after.id if after else None,
            datum_seconds=domain.datum_seconds(newest_success),
        )
        await self._job_event(job, "start", lambda j: domain.decide_job_started(j, started))
        self.log.info(
            "job_started",
            pipeline=job.pipeline,
            job=job.id,
            total=started.total,
            skipped=skipped,
            waiting=waiting,
            after=started.after,
        )

    def _plan(self, job: Job, spec: PipelineSpec, salt: str, base_index: str, running_plan: str) -> DatumPlan:
        parts = {}
        for i, (given, pfs) in enumerate(zip(job.inputs, pfs_inputs(spec.input), strict=True)):
            commit = self.fs.state.repos[given.repo].commits[given.commit]
            parts[i] = self.blobs.input_parts(commit.layers, pfs.glob, i)
        base = self.blobs.index(base_index) if base_index else None
        running = {d.id: d.hash for d in self.blobs.plan(running_plan).datums} if running_plan else None
        return DatumPlan(
            datums.plan(
                spec.input,
                job.inputs,
                parts,
                salt=salt,
                base=base,
                reprocess_every_job=spec.reprocess_spec == "every_job",
                running=running,
            )
        )

    async def rebase_job(self, job: Job) -> None:
        """Every earlier job has ended: skip the waiting datums the base job (the newest successful
        one, as it turned out) processed alike, and queue the rest."""
        base = domain.base_job(self.pps.state, job.pipeline, job.id)

        def replan() -> tuple[str, int, list[str]]:
            index = self.blobs.index(base.index) if base is not None else None
            planned, dropped = datums.rebase(self.blobs.plan(job.plan).datums, index)
            return self.blobs.save_plan(DatumPlan(planned)), sum(1 for d in planned if d.skip), dropped

        key, skipped, dropped = await asyncio.to_thread(replan)
        rebased = JobRebased(
            pipeline=job.pipeline,
            job=job.id,
            rebased=utcnow(),
            plan=key,
            base=base.id if base is not None else None,
            skipped=skipped,
            to_run=job.total - skipped,
            dropped=dropped,
        )
        await self._job_event(job, "rebase", lambda j: domain.decide_rebased(j, rebased))
        self.log.info("job_rebased", pipeline=job.pipeline, job=job.id, skipped=skipped, base=rebased.base)

    async def queue_job(self, job: Job) -> None:
        _, problem = domain.input_problem(self.fs.state, job)
        if problem:  # an input commit deleted since the job was planned
            raise UserError(problem)
        plan = await asyncio.to_thread(self.blobs.plan, job.plan)
        spec = self.pps.state.pipelines[job.pipeline].specs[job.version]
        timeout = parse_duration(spec.datum_timeout).total_seconds() if spec.datum_timeout else 0.0
        trees = {
            i: list(self.fs.state.repos[given.repo].commits[given.commit].layers)
            for i, given in enumerate(job.inputs)
        }
        # The datums that waited for an earlier job go first: queued behind those later jobs queued
        # at once, the oldest job (that every later one waits for) would finish last.
        subject = datum_queue.datum_subject(job.pipeline, first=job.queues_waiting)
        queue = WorkQueue(self.rt.nc, datum_queue.queue_for(job.pipeline))
        # The batches come from the plan alone, so queueing again after a crash makes the same
        # batches, and the queue's de-duplication (by batch id) drops the repeats.
        to_run = [planned for planned in plan.datums if domain.queues(job, planned)]
        # How long a datum takes, as known when the job started (the newest successful job may
        # change since: batches cut again after a crash must be the same).
        seconds = job.datum_seconds
        if not seconds and job.base is not None and job.base in self.pps.state.jobs[job.pipeline]:
            seconds = domain.datum_seconds(self.pps.state.jobs[job.pipeline][job.base])  # (older events)
        size = domain.batch_size(
            len(to_run), spec.workers, asked=spec.datum_set_spec.number, seconds_per_datum=seconds
        )
        queued = [
            BatchedDatum(
                datum=planned.id,
                inputs=[
                    TaskInput(
                        name=job.inputs[p.input].name,
                        repo=job.inputs[p.input].repo,
                        branch=job.inputs[p.input].branch,
                        commit=job.inputs[p.input].commit,
                        path=p.path,
                        layers=trees[p.input],
                    )
                    for p in planned.parts
                ],
            )
            for planned in to_run
        ]
        for run in domain.batches([len(_encode(d)) for d in queued], size):
            members = queued[run.start : run.stop]
            if all(d.datum in job.results for d in members):
                continue
            first = members[0].datum
            step = job_step(self.pps.state, f"batch-{first}-{len(members)}", job.pipeline, job.id)
            task = DatumBatch(
                pipeline=job.pipeline,
                job=job.id,
                datums=members,
                transform=spec.transform,
                image=spec.transform.image,
                datum_tries=spec.datum_tries,
                datum_timeout=timeout,
                report=step,
                pipeline_created=self.pps.state.pipelines[job.pipeline].created.isoformat(),
            )
            # (the id holds the pipeline's creation: a pipeline made again may reuse job ids)
            await queue.submit(subject, _encode(task), msg_id=step)
        await self._job_event(job, "queued-waiting" if job.queues_waiting else "queued", domain.decide_queued)

    async def finish_job(self, job: Job) -> None:
        now = utcnow()
        reason = domain.failure_reason(job)
        if not reason:
            try:
                # (results read here: the merge runs in a thread, and reading may decode)
                tree, index_key = await asyncio.to_thread(self._merge, job, dict(job.results))
            except datums.OutputCollision as collision:
                reason = str(collision)
        if reason:
            await self._job_event(job, "failed", lambda j: domain.decide_job_failed(j, reason, now))
            await self.finish_failed_outputs()
            return
        commit = self.fs.state.repos.get(job.pipeline, domain.RepoView()).commits.get(job.id)
        if commit is not None and not commit.finished:
            await self._fs(
                fs.FinishOutputCommit(
                    id=job_step(self.pps.state, "output-done", job.pipeline, job.id),
                    repo=job.pipeline,
                    commit=job.id,
                    layers=tree,
                )
            )
        finished = JobFinished(
            pipeline=job.pipeline, job=job.id, state=SUCCESS, finished=now, index=index_key
        )
        await self._job_event(job, "succeeded", lambda j: domain.decide_job_finished(j, finished))
        self.log.info("job_finished", pipeline=job.pipeline, job=job.id, state=SUCCESS)

    async def store_results(self, job: Job) -> None:
        """An ended job's results to the object store; the state keeps their totals."""
        results = list(job.results.values())
        key = await asyncio.to_thread(self.blobs.save_results, DatumResults(results))
        stored = JobResultsStored(
            pipeline=job.pipeline, job=job.id, results=key, tally=domain.tally_of(results)
        )
        await self._job_event(job, "results", lambda j: domain.decide_results_stored(j, stored))

    def _merge(self, job: Job, results: dict[str, DatumFinished]) -> tuple[list[str], str]:
        """The job's output tree and its datum index: run datums' outputs, and the base job's for
        skipped ones."""
        plan = self.blobs.plan(job.plan)
        base_key = self.pps.state.jobs[job.pipeline][job.base].index if job.base else ""
        base = self.blobs.index(base_key) if base_key else None
        if base is not None and base.merged and job.skipped == len(plan.datums) == len(base.datums):
            return list(base.tree), base_key  # every datum kept as it was: so is the index
        outputs: list[tuple[str, str]] = []
        index: dict[str, IndexedDatum] = {}
        added: list[tuple[str, str]] = []  # outputs of datums run in this job
        for planned in plan.datums:
            if planned.skip and base is not None:
                kept = base.datums[planned.id]
                outputs.append((planned.id, kept.output))
                index[planned.id] = IndexedDatum(planned.hash, DATUM_SUCCESS, kept.output)
                continue
            result = results[planned.id]
            output = result.output if result.state == DATUM_SUCCESS else ""
            outputs.append((planned.id, output))
            added.append((planned.id, output))
            index[planned.id] = IndexedDatum(planned.hash, result.state, output)
        tree: list[str] | None = None
        if base is not None and base.merged:  # read only what changed since the base job
            skipped = {d.id for d in plan.datums if d.skip}
            removed = [d.output for i, d in base.datums.items() if i not in skipped]
            try:
                tree = self.blobs.merged_onto(base.tree, removed, added)
            except datums.OutputCollision:
                tree = None  # the full merge below names both datums
        if tree is None:
            tree, _ = self.blobs.merged_output(outputs)
        return tree, self.blobs.save_index(DatumIndex(index, tree=tree, merged=True))

    async def _job_event(self, job: Job, step: str, decide: Callable[[Job], list[Event]]) -> None:
        """Append what `decide` makes of the job as it is when appended (not as it was when this
        step began: an update may have killed it meanwhile)."""

        def on_current(state: PpsState) -> list[Event]:
            current = state.jobs.get(job.pipeline, {}).get(job.id)
            return decide(current) if current is not None else []

        if job.pipeline not in self.pps.state.pipelines:
            return
        await self.rt.execute(
            self.pps,
            subjects.job_events(job.pipeline),
            job_step(self.pps.state, step, job.pipeline, job.id),
            on_current,
        )

    async def _wait_for_news(self, marks: tuple[int, int]) -> None:
        waits = [
            asyncio.ensure_future(
                self.pps.wait_until(
                    lambda _: self.pps.applied != marks[0] and self.pps.pending == 0, LOOK_AGAIN, "news"
                )
            ),
            asyncio.ensure_future(
                self.fs.wait_until(
                    lambda _: self.fs.applied != marks[1] and self.fs.pending == 0, LOOK_AGAIN, "news"
                )
            ),
            asyncio.ensure_future(self.poke.wait()),
            asyncio.ensure_future(self.rt.stopping.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            for w in waits:
                try:
                    await w
                except (asyncio.CancelledError, ServiceUnavailable):
                    pass

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.rt.stopping.wait(), seconds)
        except TimeoutError:
            pass

    def table(self) -> Mapping[type[Command], Handler]:
        return {
            CreatePipeline: self.create_pipeline,
            DeletePipeline: self.delete_pipeline,
            StopPipeline: self.stop_pipeline,
            StartPipeline: self.start_pipeline,
            InspectPipeline: self.inspect_pipeline,
            ListPipelines: self.list_pipelines,
            RecordDatum: self.record_datum,
            RecordDatums: self.record_datums,
            SettledDatums: self.settled_datums,
            ListJobs: self.list_jobs,
            InspectJob: self.inspect_job,
            WaitJob: self.wait_job,
            ListDatums: self.list_datums,
        }


def _encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def setup(rt: Runtime) -> Mapping[type[Command], Handler]:
    scheduler = Scheduler(rt)
    rt.background(scheduler.run)
    return scheduler.table()
