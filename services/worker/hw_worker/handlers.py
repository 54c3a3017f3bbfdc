"""The worker's loop: take datum tasks from the queue, run user code on each, report to the
scheduler. It takes no commands of its own (it answers health).

A task is acked only after the scheduler has recorded the datum, so a worker killed at any point
leaves the task to be delivered again (to itself after a restart, or to another worker). The
report's id comes from the job and datum, so a datum reported twice is recorded once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
import uuid
from typing import Any

import msgspec

from hw_events import datum_queue, observability, pps, subjects
from hw_events.bus import CommandClient
from hw_events.errors import TransientError, UserError
from hw_events.fs import commit_id_for
from hw_events.messages import utcnow
from hw_events.pps import DATUM_SUCCESS, DatumFinished, DatumTask, LogLine, RecordDatum
from hw_events.workqueue import Task, WorkQueue
from hw_storage.config import open_store
from hw_worker import domain, runner
from hw_worker.pfs import Scratch, sweep_stale

_log_encoder = msgspec.json.Encoder()


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
        scratch = os.environ.get("HW_WORKER_SCRATCH") or os.path.join(tempfile.gettempdir(), "hw-worker")
        sweep_stale(scratch)  # what workers killed mid-datum left behind
        self.scratch = Scratch(open_store(), os.path.join(scratch, str(os.getpid())))
        self.isolation = isolation
        # A worker runs one datum's user code at a time (with its own namespace there is one /pfs),
        # and takes the next datum only then (`busy=1`), so no datum waits here behind a long one
        # while another worker is idle; but the upload and report of one overlap the next.
        self.concurrency = concurrency
        self.running = asyncio.Lock()
        self.log = observability.log(component="worker", pipeline=pipeline, isolation=isolation.mode)

    async def run(self) -> None:
        await self.queue.ensure()
        self.log.info("worker_taking_datums", concurrency=self.concurrency)
        await self.queue.run(
            self.handle, stop=self.stopping, concurrency=self.concurrency, on_dead=self.given_up, busy=1
        )

    async def handle(self, task: Task) -> None:
        try:
            datum = task.decode(DatumTask)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise UserError(f"malformed datum task: {err}") from None
        result = await self.process(datum, task)
        await self.report(datum, result)

    async def given_up(self, task: Task, reason: str) -> None:
        """A task dead-lettered (its workers kept dying): the datum fails, so its job can end."""
        try:
            datum = task.decode(DatumTask)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        await self.report(datum, self.result(datum, pps.DATUM_FAILED, reason=reason, attempts=task.attempt))

    def result(self, task: DatumTask, state: str, **fields: Any) -> DatumFinished:
        return DatumFinished(
            pipeline=task.pipeline,
            job=task.job,
            datum=task.datum,
            state=state,
            worker=self.instance,
            **fields,
        )

    async def process(self, task: DatumTask, delivery: Task | None = None) -> DatumFinished:
        """Run the datum; once its user code is done, `delivery` frees its slot for the next."""
        name = f"{task.job[:8]}-{task.datum[:12]}-{uuid.uuid4().hex[:6]}"
        started = time.monotonic()
        say = self._logger(task)
        try:
            pfs, downloaded = await asyncio.to_thread(self.scratch.prepare, name, task.inputs)
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
                    await asyncio.to_thread(_empty_out, pfs)
                await say("worker", "beginning to run user code")
                outcome = await user_code(transform.cmd, transform.stdin)
                if outcome.ok(transform.accept_return_code):
                    if delivery is not None:
                        delivery.free_slot()  # the next datum may start while this one uploads
                    await say("worker", f"finished running user code after {outcome.seconds:.3f}s")
                    out = await asyncio.to_thread(self.scratch.upload_out, pfs, clean=name)
                    name = ""  # cleaned
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
            return self.result(
                task,
                domain.after_failures(recovered),
                reason=f"{reason} ({task.datum_tries} {'try' if task.datum_tries == 1 else 'tries'})",
                download_bytes=downloaded,
                seconds=time.monotonic() - started,
                attempts=task.datum_tries,
            )
        finally:
            if name:
                await asyncio.to_thread(self.scratch.clean, name)

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

    async def report(self, task: DatumTask, result: DatumFinished) -> None:
        key = task.report or f"datum:{result.pipeline}:{result.job}:{result.datum}"
        command = RecordDatum(id=commit_id_for(key), result=result)
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


def _empty_out(pfs: str) -> None:
    out = os.path.join(pfs, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
