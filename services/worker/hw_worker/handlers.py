"""The worker's loop: take batches of datums from the queue, run user code on each datum, report
to the scheduler. It takes no commands of its own (it answers health).

Results are reported in groups (at the end of the batch, or once a second on a long one), and a
task is acked only after the scheduler has recorded all of its datums, so a worker killed at any
point leaves the task to be delivered again (to itself after a restart, or to another worker).
Before each batch the worker asks which of its datums need not run (already recorded, or their
job is over) and runs only the rest; and a datum reported twice is recorded once.

A batch delivered again (a worker died or failed in it) goes back to the queue as up to
`SPLIT_INTO` batches of the datums left, and a task delivered again runs alone in its worker (no
next task overlaps its upload and report). So a datum that kills its worker every time is cut
off from the rest in a round or two and fails alone once its own deliveries are spent; a batch
that failed for a passing reason (the store down a moment) costs a few tasks, not one per datum.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from hw_events import datum_queue, observability, pps, subjects
from hw_events.bus import CommandClient
from hw_events.errors import TransientError, UserError
from hw_events.fs import commit_id_for
from hw_events.messages import utcnow
from hw_events.pps import (
    DATUM_SUCCESS,
    DatumBatch,
    DatumFinished,
    DatumTask,
    LogLine,
    RecordDatums,
    SettledDatums,
)
from hw_events.workqueue import HeldTasks, Task, WorkQueue
from hw_storage.config import open_store
from hw_worker import domain, runner
from hw_worker.pfs import Scratch, empty_out, sweep_stale

_log_encoder = msgspec.json.Encoder()
_task_encoder = msgspec.json.Encoder()
REPORT_EVERY = 1.0  # seconds: on a long batch, results are reported at least this often
# A batch delivered again is split into this many (so a datum that kills its worker is cut off
# from the rest in two rounds of 64, and a batch that failed for a passing reason costs 8 tasks).
SPLIT_INTO = 8
UPLOADS_AHEAD = 2  # datums of a batch uploading while the next one runs, at most


class Worker:
    """Runs one pipeline's datums, `concurrency` at a time, with its own NATS connection."""

    def __init__(
        self,
        nc: Any,
        pipeline: str,
        *,
        stopping: asyncio.Event,
        isolation: runner.Isolation,
        concurrency: int = 1,
    ) -> None:
        self.nc = nc
        self.bus = CommandClient(nc)
        self.stopping = stopping
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.queue = WorkQueue(nc, datum_queue.queue_for(pipeline))
        self.first = WorkQueue(nc, datum_queue.queue_for(pipeline, first=True))  # taken before
        scratch = os.environ.get("HW_WORKER_SCRATCH") or os.path.join(tempfile.gettempdir(), "hw-worker")
        sweep_stale(scratch)  # what workers killed mid-datum left behind
        self.scratch = Scratch(open_store(), os.path.join(scratch, str(os.getpid())))
        self.isolation = isolation
        # A worker runs one datum's user code at a time (with its own namespace there is one /pfs),
        # and takes the next batch only when its current batch's user code is done (`busy=1`), so
        # no batch waits here behind a long one while another worker is idle; but the uploads and
        # report of one batch overlap the next.
        self.concurrency = concurrency
        self.running = asyncio.Lock()
        # Set by the worker service: the tasks this process holds, for it to hand back at once
        # if this process dies (instead of after HW_DATUM_ACK_WAIT without heartbeats).
        held = os.environ.get("HW_WORKER_HELD")
        self.held = HeldTasks(Path(held)) if held else None
        self.log = observability.log(component="worker", pipeline=pipeline, isolation=isolation.mode)

    async def run(self) -> None:
        await self.queue.ensure()
        await self.first.ensure()
        self.log.info("worker_taking_datums", concurrency=self.concurrency)
        await self.queue.run(
            self.handle,
            stop=self.stopping,
            concurrency=self.concurrency,
            on_dead=self.given_up,
            busy=1,
            ahead=self.first,
            held=self.held,
        )

    async def handle(self, task: Task) -> None:
        batch = _batch_of(task)
        datums = await self._unsettled(batch)
        if task.attempt > 1 and len(datums) > 1:
            await self._split(task, batch, datums)
            return
        reports = _Reports(self, batch)
        # One datum's user code runs at a time; its upload overlaps the next datum (at most
        # UPLOADS_AHEAD of them: each holds a scratch folder).
        uploading: list[asyncio.Future[DatumFinished]] = []
        flusher = asyncio.create_task(reports.flush_while_running(uploading))
        try:
            for datum in datums:
                if len(uploading) >= UPLOADS_AHEAD:
                    await asyncio.wait({uploading[0]})
                    reports.take_done(uploading)
                uploading.append(await self.run_datum(datum))
                reports.take_done(uploading)
            if task.attempt == 1:  # the next task may start while these upload and report
                task.free_slot()  # (not beside a task delivered again: it may kill the worker)
            for upload in uploading:
                reports.add(await upload)
            uploading.clear()
            await _stopped(flusher)
            await reports.send()
        except Exception:
            # What is done is kept: the datums reported now are not run again by whoever takes
            # the batch next (the reason this one failed is raised all the same).
            await _stopped(flusher)  # (one sender at a time)
            with contextlib.suppress(Exception):
                reports.take_done(uploading)
                await asyncio.wait_for(reports.send(), REPORT_EVERY)
            raise
        finally:
            await _stopped(flusher)
            for upload in uploading:
                upload.cancel()

    async def _unsettled(self, batch: DatumBatch) -> list[DatumTask]:
        """The batch's datums, less those a worker that died already reported and all of them if
        their job is over (one question per batch: cheap, and a killed job's batches cost nothing)."""
        datums = batch.tasks()
        query = SettledDatums(
            pipeline=batch.pipeline,
            job=batch.job,
            datums=[d.datum for d in datums],
            pipeline_created=batch.pipeline_created,
        )
        try:
            done = set(await self.bus.request(pps.SERVICE, query, list[str]) or [])
        except TransientError as err:  # (the scheduler restarting): run them all; it records each once
            self.log.info("settled_datums_unknown", job=batch.job, error=err.message)
            return datums
        if done:
            self.log.info("datums_need_not_run", job=batch.job, settled=len(done), batch=len(datums))
        return [d for d in datums if d.datum not in done]

    async def _split(self, task: Task, batch: DatumBatch, datums: list[DatumTask]) -> None:
        """Queue the datums left in a batch delivered again as up to `SPLIT_INTO` batches (this one
        is then done). Ids from the batch's and each part's datums, so splitting again (the worker
        died in it) queues each part once, and a part dropped as a repeat is one queued before."""
        left = {d.datum for d in datums}
        kept = [d for d in batch.datums if d.datum in left]
        prefix = _ids_from(batch)
        size = -(-len(kept) // SPLIT_INTO)
        for start in range(0, len(kept), size):
            part = kept[start : start + size]
            await self.queue.submit(
                task.subject,
                _task_encoder.encode(msgspec.structs.replace(batch, datums=part)),
                msg_id=commit_id_for(f"{prefix}:part:" + ",".join(d.datum for d in part)),
            )
        self.log.info("batch_split", job=batch.job, datums=len(kept), attempt=task.attempt)

    async def given_up(self, task: Task, reason: str) -> bool:
        """A task given up (its workers kept dying). A batch of several datums is split instead
        (True: the queue acks it); the datum of a batch of one fails, so its job can end."""
        try:
            batch = _batch_of(task)
        except UserError:
            return False
        if len(batch.datums) > 1:
            datums = await self._unsettled(batch)
            if len(datums) > 1:
                await self._split(task, batch, datums)
                return True
        reports = _Reports(self, batch)
        for datum in batch.tasks():  # (those already recorded keep their result)
            reports.add(self.result(datum, pps.DATUM_FAILED, reason=reason, attempts=task.attempt))
        await reports.send()
        return False

    def result(self, task: DatumTask, state: str, **fields: Any) -> DatumFinished:
        return DatumFinished(
            pipeline=task.pipeline,
            job=task.job,
            datum=task.datum,
            state=state,
            worker=self.instance,
            **fields,
        )

    async def run_datum(self, task: DatumTask) -> asyncio.Future[DatumFinished]:
        """Run the datum's user code; what is left (uploading its output) goes on in the background:
        the result is the future's."""
        started = time.monotonic()
        say = self._logger(task)
        pfs, downloaded = await asyncio.to_thread(self.scratch.prepare, task.inputs)
        held = True  # the folder goes back to the scratch here, unless an upload takes it
        try:
            user_pfs = runner.PFS if self.isolation.private else pfs
            env = domain.datum_env(task, user_pfs, os.environ, self.instance)
            transform = task.transform
            reason = ""

            async def user_code(cmd: list[str], stdin: list[str]) -> runner.Outcome:
                async with self.running:
                    with self.isolation.mounted(pfs):
                        return await runner.run(
                            self.isolation.argv(pfs, cmd),
                            stdin=self.isolation.text(domain.stdin_of(stdin).decode(), pfs).encode(),
                            env=env,
                            timeout=task.datum_timeout,
                            on_line=say,
                        )

            for attempt in range(1, task.datum_tries + 1):
                if attempt > 1:  # (prepare made it empty for the first)
                    await asyncio.to_thread(empty_out, pfs)
                await say("worker", "beginning to run user code")
                outcome = await user_code(transform.cmd, transform.stdin)
                if outcome.ok(transform.accept_return_code):
                    await say("worker", f"finished running user code after {outcome.seconds:.3f}s")
                    upload = asyncio.ensure_future(
                        self._upload(task, pfs, downloaded=downloaded, started=started, attempt=attempt)
                    )
                    held = False
                    return upload
                reason = (
                    f"timed out after {task.datum_timeout:g}s (datum_timeout)"
                    if outcome.code is None
                    else f"user code exited with code {outcome.code}"
                )
                await say("worker", f"errored running user code after {outcome.seconds:.3f}s: {reason}")
            recovered = None
            if transform.err_cmd:
                await say("worker", "running err_cmd")
                recovered = (await user_code(transform.err_cmd, transform.err_stdin)).ok(())
            failed: asyncio.Future[DatumFinished] = asyncio.get_running_loop().create_future()
            failed.set_result(
                self.result(
                    task,
                    domain.after_failures(recovered),
                    reason=f"{reason} ({task.datum_tries} {'try' if task.datum_tries == 1 else 'tries'})",
                    download_bytes=downloaded,
                    seconds=time.monotonic() - started,
                    attempts=task.datum_tries,
                )
            )
            return failed
        finally:
            if held:
                await asyncio.to_thread(self.scratch.release, pfs)

    async def _upload(
        self, task: DatumTask, pfs: str, *, downloaded: int, started: float, attempt: int
    ) -> DatumFinished:
        out = await asyncio.to_thread(self.scratch.upload_out, pfs, release=True)
        return self.result(
            task,
            DATUM_SUCCESS,
            output=out.layer,
            files=out.files,
            download_bytes=downloaded,
            upload_bytes=out.bytes,
            seconds=time.monotonic() - started,
            attempts=attempt,
        )

    def _logger(self, task: DatumTask) -> runner.LineSink:
        subject = subjects.log_subject(task.pipeline, task.job, task.datum)

        async def say(stream: str, line: str) -> None:
            entry = LogLine(
                pipeline=task.pipeline,
                job=task.job,
                datum=task.datum,
                worker=self.instance,
                stream=stream,
                ts=utcnow(),
                message=line,
                user=stream != "worker",
            )
            await self.nc.publish(subject, _log_encoder.encode(entry))

        return say

    async def report(self, batch: DatumBatch, results: list[DatumFinished]) -> None:
        # The id comes from the batch and the datums this report holds, so a report sent again
        # (after a lost reply) is recorded once, and no other report is taken for it.
        prefix = _ids_from(batch)
        command = RecordDatums(
            id=commit_id_for(f"{prefix}:" + ",".join(r.datum for r in results)),
            pipeline=batch.pipeline,
            job=batch.job,
            results=results,
            pipeline_created=batch.pipeline_created,
        )
        pause = 0.2
        while True:  # the work is done: wait for the scheduler as long as it takes, not redo it
            try:
                await self.bus.request(pps.SERVICE, command)
                return
            except TransientError as err:
                if self.stopping.is_set():
                    raise  # the task goes back to the queue: another worker runs it again
                self.log.info("report_postponed", error=err.message)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


class _Reports:
    """A batch's results not reported yet: sent when the batch is done, or, on a long batch, once
    `REPORT_EVERY` seconds have passed since the oldest was ready."""

    def __init__(self, worker: Worker, batch: DatumBatch) -> None:
        self.worker = worker
        self.batch = batch
        self.results: list[DatumFinished] = []
        self.since = 0.0

    def add(self, result: DatumFinished) -> None:
        if not self.results:
            self.since = time.monotonic()
        self.results.append(result)

    def take_done(self, uploading: list[asyncio.Future[DatumFinished]]) -> None:
        """Move the finished uploads' results in (in order: the first unfinished one stops it)."""
        while uploading and uploading[0].done():
            self.add(uploading.pop(0).result())

    def due(self) -> bool:
        return bool(self.results) and time.monotonic() - self.since >= REPORT_EVERY

    async def send(self) -> None:
        if not self.results:
            return
        results, self.results = self.results, []
        try:
            await self.worker.report(self.batch, results)
        except BaseException:
            self.results = results + self.results  # not reported: still to send
            raise

    async def flush_while_running(self, uploading: list[asyncio.Future[DatumFinished]]) -> None:
        """While the batch runs: report what is ready once it has waited `REPORT_EVERY`."""
        while True:
            await asyncio.sleep(REPORT_EVERY / 4)
            self.take_done(uploading)
            if self.due():
                await self.send()


async def _stopped(flusher: asyncio.Task[None]) -> None:
    """Stop the background reporting. What it failed to send stays in `_Reports` for the last send
    (which raises, if it fails too), so its own error is not raised here."""
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await flusher


def _ids_from(batch: DatumBatch) -> str:
    """What the ids of a batch's reports and parts are made from (one per batch and job)."""
    return batch.report or f"datums:{batch.pipeline}:{batch.job}"


def _batch_of(task: Task) -> DatumBatch:
    try:
        batch: DatumBatch = task.decode(DatumBatch)
        return batch
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        try:  # a single datum, as queued before batches
            return DatumBatch.of(task.decode(DatumTask))
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise UserError(f"malformed datum task: {err}") from None
