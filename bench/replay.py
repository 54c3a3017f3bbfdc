"""Replay: the scheduler restarting over a long-lived deployment's log (issue #6).

Goal: `services/scheduler` restarting over a log of 1,000,000 events is ready in under 2 s with
snapshots, and replays at least 0.8 of raw nats-py speed without them.

The log (`timeline`, written by `LogWriter` as the services write: one `append_many` per run of
events that touch different aggregates, each checked against its aggregate's version and carrying
its command's id). `PIPELINES` pipelines, each reading its own input repo `data-NN` (glob `/*`)
and writing its output repo `pipeline-NN`; their histories interleave, one event of each in turn.
A pipeline is created once (input repo with a first commit, output repo with a branch following
the input, `PipelineCreated`), then runs job after job. A job is:

- HW_FS, 8 events: on the input repo `CommitStarted`, `BranchHeadMoved` (and, by provenance, on
  the output repo `CommitStarted` + `BranchHeadMoved`: one `start commit`), 2 `FilesChanged`
  (files put; the scheduler skips them), `CommitFinished`; at the job's end the output commit's
  `CommitFinished` (its tree);
- HW_PPS, 5 + k events: `JobCreated`, `JobStarted`, `DatumsQueued`, k `DatumsFinished` of up to
  `BATCH` (16) `DatumFinished` results each (k cycles through `BATCHES`: 4.5 on average, one job
  in `FAIL_EVERY` has a failed datum and fails), `JobFinished`, then `JobResultsStored` (the
  scheduler moved the ended job's results to the object store).

Every `UPDATE_EVERY`-th job comes from `update pipeline` instead (`PipelineUpdated`, and a new
output commit over the same inputs). So about 17.5 events a job; 1,000,000 events are:

- HW_FS, 456,960 events (45.7%), 0.30 GB (420-600 B a message): CommitStarted and
  CommitFinished 114,240 each, BranchHeadMoved and FilesChanged 114,160 each, and the creations;
- HW_PPS, 543,040 events (54.3%), 1.80 GB: DatumsFinished 257,160 (26% of the log, ~6.1 KB a
  message and an `Hw-Event` header naming its job, 3,685,895 datum results in all), JobCreated,
  JobStarted, DatumsQueued and JobFinished 57,160 each and JobResultsStored 57,120 (300-500 B),
  40 PipelineCreated, 80 PipelineUpdated;

that is 57,160 jobs, ~1,430 a pipeline, every one finished (all but the newest 40 with their
results stored): the state of a deployment that has run for a long while.

Measured, in the same run:
- without snapshots: both projections of the scheduler (`FS_VIEW` over HW_FS, `PPS` over HW_PPS),
  built as `hw_events.service.Runtime` builds them, on one connection, caught up from the start of
  the log by `hw_events.catch_up` as `service.serve` does it: with the default settings the
  shorter replay (HW_FS) goes to a helper process while this one replays HW_PPS. The baseline is
  raw nats-py ordered consumers counting the same messages, the faster of two ways: both streams
  at once on a connection each, or one stream after the other (it varies which is faster), in
  events/s. Shown beside it: the projectors caught up in this process alone, one after the
  other (`HW_REPLAY_HELPERS_FROM=0`), against the same baseline;
- with snapshots: a replay, its snapshots saved on stop (as a scheduler that ran a while has
  them), a tail of `TAIL` (1%) more events appended, then new projectors on a new connection timed
  from the start of their catch-up to ready (too short a tail for a helper); the baseline is the
  replay from the start above, in seconds. A restart not ready after `RESTART_TIMEOUT` is given
  up on.

The collector is set as the services set it (`hw_events.service.GC_EVERY`). The state's size as
msgpack (what a snapshot holds) and the time to encode it, each snapshot's size as stored
(compressed), the time `SnapshotStore.load` takes, and the decode time are printed along the way.

python -m bench.replay [--quick] [-n EVENTS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import itertools
import random
import tempfile
import time
from collections import Counter
from collections.abc import Generator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats

from bench.log import count_to
from bench.report import Result, median_of, print_table, progress
from hw_events import snapshots, streams, subjects
from hw_events.catch_up import catch_up
from hw_events.fs import (
    AUTO,
    BY_COMMIT,
    BY_PIPELINE,
    BY_UPSTREAM,
    BranchCreated,
    BranchHeadMoved,
    CommitFinished,
    CommitStarted,
    FilesChanged,
    RepoCreated,
    commit_id_for,
)
from hw_events.messages import Event, Version
from hw_events.pipeline_spec import (
    Input,
    ParallelismSpec,
    PfsInput,
    PipelineName,
    PipelineSpec,
    Transform,
)
from hw_events.pps import (
    DATUM_FAILED,
    DATUM_SUCCESS,
    FAILURE,
    SUCCESS,
    DatumFinished,
    DatumsFinished,
    DatumsQueued,
    JobCreated,
    JobFinished,
    JobInput,
    JobResultsStored,
    JobStarted,
    PipelineCreated,
    PipelineUpdated,
)
from hw_events.projection import Projector
from hw_events.service import GC_EVERY, Settings
from hw_events.snapshots import SnapshotStore
from hw_events.store import Append, EventStore
from hw_scheduler.domain import tally_of
from hw_scheduler.main import SPEC
from tests.infra import nats_server

PIPELINES = 40
BATCH = 16  # datums a worker reports at once (one DatumsFinished)
BATCHES = (1, 2, 4, 6, 8, 3, 5, 7)  # DatumsFinished per job, job after job: 4.5 on average
FILES_PER_COMMIT = 2  # FilesChanged per input commit (files put; the scheduler skips them)
UPDATE_EVERY = 500  # every so many jobs of a pipeline, one comes from `update pipeline`
FAIL_EVERY = 50  # one job in so many has a failed datum, and fails
INPUT_FILES = 1024  # datums a job could have (files in the input): the rest are skipped
WORKERS = 2
TAIL = 0.01  # appended after the snapshots, as a fraction of the log
READY_TIMEOUT = 1800.0  # seconds a replay may take before the benchmark gives up
RESTART_GOAL = 2.0  # seconds
RESTART_TIMEOUT = 120.0  # seconds a restart from snapshots may take before the benchmark gives up

Item = tuple[str, Event, str]  # aggregate subject, event, id of the command that caused it


# --- the log ---------------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


class PipelineLife:
    """One pipeline's history, event by event: created, then job after job, forever."""

    def __init__(self, index: int, start: datetime) -> None:
        self.rng = random.Random(index)
        self.name = f"pipeline-{index:02d}"
        self.input = f"data-{index:02d}"
        self.now = start
        self.version = 1
        self.salt = self._hex(16)
        self.jobs = 0
        self.input_head = ""
        self.output_head = ""
        self.base: str | None = None  # the last successful job
        self.output_layers: list[str] = []
        # Datum ids as the scheduler makes them (a digest of the input and the glob match): the same
        # datum has the same id in every job of the pipeline.
        self.datums = [_digest(f"{self.input}:{self.input}:master:/file-{i:05d}") for i in range(INPUT_FILES)]
        self.workers = [f"{self.name}-worker-{w}-{1000 + index * 7 + w}" for w in range(WORKERS)]
        self.next_datum = 0
        self.fs_input = subjects.repo_events(self.input)
        self.fs_output = subjects.repo_events(self.name)
        self.pps_pipeline = subjects.pipeline_events(self.name)
        self.pps_jobs = subjects.job_events(self.name)

    def _hex(self, nbytes: int = 32) -> str:
        return self.rng.randbytes(nbytes).hex()

    def _tick(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def spec(self) -> PipelineSpec:
        return PipelineSpec(
            pipeline=PipelineName(name=self.name),
            transform=Transform(cmd=["python3", "/code/process.py", f"--version={self.version}"]),
            input=Input(pfs=PfsInput(repo=self.input, glob="/*")),
            description=f"processes {self.input}",
            parallelism_spec=ParallelismSpec(constant=WORKERS),
        )

    def events(self) -> Iterator[Item]:
        yield from self._create()
        while True:
            self.jobs += 1
            if self.jobs % UPDATE_EVERY == 0:
                job = yield from self._update()
            else:
                job = yield from self._input_commit()
            yield from self._job(job)

    def _create(self) -> Iterator[Item]:
        first, now = self._hex(16), self._tick(1)
        yield self.fs_input, RepoCreated(repo=self.input, description="raw data", created=now), self._hex(16)
        yield from self._files_put(first, parent=None)
        yield (
            self.fs_input,
            BranchCreated(repo=self.input, branch="master", head=first, created=now, reason=BY_COMMIT),
            first,
        )
        self.input_head = first
        command, now = self._hex(16), self._tick(5)
        yield (
            self.pps_pipeline,
            PipelineCreated(pipeline=self.name, spec=self.spec(), salt=self.salt, created=now),
            command,
        )
        yield self.fs_output, RepoCreated(repo=self.name, created=now), command
        job = commit_id_for(f"{command}:output")
        yield (
            self.fs_output,
            CommitStarted(repo=self.name, commit=job, branch="master", origin=AUTO, started=now),
            command,
        )
        yield (
            self.fs_output,
            BranchCreated(
                repo=self.name,
                branch="master",
                head=job,
                provenance=[f"{self.input}@master"],
                created=now,
            ),
            command,
        )
        self.output_head = job
        yield from self._job(job)

    def _files_put(self, commit: str, parent: str | None) -> Iterator[Item]:
        """A commit of files on the input repo (one `put file` makes a commit as one batch)."""
        now = self._tick(60)
        yield (
            self.fs_input,
            CommitStarted(repo=self.input, commit=commit, branch="master", parent=parent, started=now),
            commit,
        )
        yield from self._files_and_finish(commit, seconds=1)

    def _files_and_finish(self, commit: str, *, seconds: float) -> Iterator[Item]:
        """Files put into an open input commit, then the commit finished `seconds` later."""
        layers = []
        for i in range(FILES_PER_COMMIT):
            layer = f"layers/{self._hex()}"
            layers.append(layer)
            files = self.rng.randint(1, 40)
            yield (
                self.fs_input,
                FilesChanged(
                    repo=self.input,
                    commit=commit,
                    layer=layer,
                    files=files,
                    bytes=files * 40_000,
                    size_bytes=INPUT_FILES * 40_000,
                    total_files=INPUT_FILES + i,
                ),
                self._hex(16),
            )
        yield (
            self.fs_input,
            CommitFinished(
                repo=self.input,
                commit=commit,
                finished=self._tick(seconds),
                size_bytes=INPUT_FILES * 40_000,
                files=INPUT_FILES,
                layers=[f"layers/{self._hex()}", *layers],  # compacted older layers, then these
            ),
            self._hex(16),
        )

    def _input_commit(self) -> Generator[Item, None, str]:
        """Files put into the input repo: a new head, and by provenance a new output commit (a job)."""
        commit, now = self._hex(16), self._tick(300)
        yield (
            self.fs_input,
            CommitStarted(
                repo=self.input, commit=commit, branch="master", parent=self.input_head, started=now
            ),
            commit,
        )
        yield (
            self.fs_input,
            BranchHeadMoved(
                repo=self.input,
                branch="master",
                head=commit,
                previous=self.input_head,
                reason=BY_COMMIT,
                moved=now,
            ),
            commit,
        )
        yield from self._open_output(commit, commit, BY_UPSTREAM)
        self.input_head = commit
        yield from self._files_and_finish(commit, seconds=2)
        return commit

    def _open_output(self, job: str, command: str, reason: str) -> Iterator[Item]:
        now = self.now
        yield (
            self.fs_output,
            CommitStarted(
                repo=self.name,
                commit=job,
                branch="master",
                parent=self.output_head,
                origin=AUTO,
                started=now,
            ),
            command,
        )
        yield (
            self.fs_output,
            BranchHeadMoved(
                repo=self.name,
                branch="master",
                head=job,
                previous=self.output_head,
                reason=reason,
                moved=now,
            ),
            command,
        )
        self.output_head = job

    def _update(self) -> Generator[Item, None, str]:
        """`update pipeline`: a new spec version, and a new output commit over the same inputs."""
        command, now = self._hex(16), self._tick(600)
        self.version += 1
        yield (
            self.pps_pipeline,
            PipelineUpdated(
                pipeline=self.name, version=self.version, spec=self.spec(), salt=self.salt, updated=now
            ),
            command,
        )
        job = commit_id_for(f"{command}:output")
        yield from self._open_output(job, command, BY_PIPELINE)
        return job

    def _step(self, job: str, step: str) -> str:
        return commit_id_for(f"{self.name}:{job}:{step}")

    def _job(self, job: str) -> Iterator[Item]:
        created = self._tick(0.01)
        yield (
            self.pps_jobs,
            JobCreated(
                pipeline=self.name,
                job=job,
                version=self.version,
                inputs=[JobInput(name=self.input, repo=self.input, branch="master", commit=self.input_head)],
                created=created,
            ),
            self._step(job, "create"),
        )
        batches = BATCHES[self.jobs % len(BATCHES)]
        to_run = BATCH * (batches - 1) + self.rng.randint(1, BATCH)
        yield (
            self.pps_jobs,
            JobStarted(
                pipeline=self.name,
                job=job,
                started=self._tick(0.05),
                plan=f"plans/{self._hex()}",
                base=self.base,
                total=INPUT_FILES,
                skipped=INPUT_FILES - to_run,
                to_run=to_run,
                datum_seconds=round(self.rng.uniform(0.5, 2.0), 6) if self.base else 0.0,
            ),
            self._step(job, "start"),
        )
        yield self.pps_jobs, DatumsQueued(pipeline=self.name, job=job), self._step(job, "queued")
        fails = self.jobs % FAIL_EVERY == FAIL_EVERY // 2
        first = self.next_datum
        self.next_datum = (first + to_run) % INPUT_FILES
        reported: list[DatumFinished] = []
        for start in range(0, to_run, BATCH):
            results = [
                self._result(job, self.datums[(first + i) % INPUT_FILES], failed=fails and i == 0)
                for i in range(start, min(start + BATCH, to_run))
            ]
            reported += results
            command = commit_id_for(f"datums:{self.name}:{job}:{results[0].datum}:{len(results)}")
            yield self.pps_jobs, DatumsFinished(pipeline=self.name, job=job, results=results), command
        finished = self._tick(1)
        reason = "1 datum failed" if fails else ""
        self.output_layers = [f"layers/{self._hex()}" for _ in range(self.rng.randint(1, 3))]
        yield (
            self.fs_output,
            CommitFinished(
                repo=self.name,
                commit=job,
                finished=finished,
                size_bytes=to_run * 12_000,
                files=to_run * 2,
                layers=self.output_layers,
                error=reason,
            ),
            self._step(job, "output"),
        )
        yield (
            self.pps_jobs,
            JobFinished(
                pipeline=self.name,
                job=job,
                state=FAILURE if fails else SUCCESS,
                reason=reason,
                finished=finished,
                index="" if fails else f"indexes/{self._hex()}",
            ),
            self._step(job, "failed" if fails else "succeeded"),
        )
        # The scheduler's next pass moves the ended job's results to the object store.
        yield (
            self.pps_jobs,
            JobResultsStored(
                pipeline=self.name, job=job, results=f"results/{self._hex()}", tally=tally_of(reported)
            ),
            self._step(job, "results"),
        )
        if not fails:
            self.base = job

    def _result(self, job: str, datum: str, *, failed: bool) -> DatumFinished:
        seconds = round(self.rng.uniform(0.05, 4.0), 6)
        worker = self.rng.choice(self.workers)
        if failed:
            return DatumFinished(
                pipeline=self.name,
                job=job,
                datum=datum,
                state=DATUM_FAILED,
                download_bytes=40_000,
                seconds=seconds,
                attempts=3,
                reason="user code exited with code 1 (3 tries)",
                worker=worker,
            )
        return DatumFinished(
            pipeline=self.name,
            job=job,
            datum=datum,
            state=DATUM_SUCCESS,
            output=f"layers/{self._hex()}",
            files=self.rng.randint(1, 3),
            download_bytes=40_000,
            upload_bytes=self.rng.randint(1_000, 30_000),
            seconds=seconds,
            attempts=1,
            worker=worker,
        )


def timeline(pipelines: int = PIPELINES) -> Iterator[Item]:
    """The deployment's log, forever: one event of each pipeline's history in turn."""
    start = datetime.now(UTC) - timedelta(days=365)
    lives = [PipelineLife(i, start).events() for i in range(pipelines)]
    while True:
        for life in lives:
            yield next(life)


class LogWriter:
    """Appends events as the services do: each checked against its aggregate's version, each with
    its command's id. Consecutive events go in one pipelined `append_many` as long as no aggregate
    repeats (the next expected version is known only once the previous append is acknowledged)."""

    def __init__(self, nc: Any) -> None:
        self.store = EventStore(nc)
        self.versions: dict[str, Version] = {}
        self.counts: Counter[str] = Counter()  # events written per stream
        self.types: Counter[str] = Counter()  # events written per type
        self.results = 0  # datum results in DatumsFinished events

    async def write(self, items: Iterator[Item], n: int, what: str) -> None:
        chunk: list[Append] = []
        in_chunk: set[str] = set()
        written, next_report = 0, 100_000
        started = time.perf_counter()
        for subject, event, command in itertools.islice(items, n):
            if subject in in_chunk:
                written += await self._flush(chunk)
                chunk, in_chunk = [], set()
                if written >= next_report:
                    rate = written / (time.perf_counter() - started)
                    progress(f"  {what}: {written:,} of {n:,} events ({rate:,.0f}/s)")
                    next_report += 100_000
            chunk.append(Append(subject, [event], self.versions.get(subject, Version.new()), command))
            in_chunk.add(subject)
            self.types[type(event).__name__] += 1
            if isinstance(event, DatumsFinished):
                self.results += len(event.results)
        written += await self._flush(chunk)
        progress(f"  {what}: {written:,} events in {time.perf_counter() - started:.0f}s")

    async def _flush(self, chunk: list[Append]) -> int:
        if not chunk:
            return 0
        for append, version in zip(chunk, await self.store.append_many(chunk), strict=True):
            self.versions[append.subject] = version
            self.counts[streams.FS.name if append.subject.startswith("hw.fs.") else streams.PPS.name] += 1
        return len(chunk)


# --- replaying -------------------------------------------------------------------------------------


@contextlib.contextmanager
def services_gc() -> Iterator[None]:
    """The collector as the services set it (`hw_events.service.main`)."""
    before = gc.get_threshold()
    gc.set_threshold(GC_EVERY, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def projectors(nc: Any, store: SnapshotStore | None, *, snapshot_every: int = 0) -> list[Projector[Any]]:
    """The scheduler's projectors, built as `hw_events.service.Runtime` builds them."""
    settings = Settings()
    snapshot_every = snapshot_every or settings.snapshot_every
    return [
        Projector(
            nc,
            r.stream,
            r.projection,
            subjects=r.subjects or None,
            snapshots=store,
            snapshot_every=snapshot_every,
            snapshot_interval=settings.snapshot_interval,
        )
        for r in SPEC.replays
    ]


async def start_and_wait(running: list[Projector[Any]], url: str, *, helpers: bool = True) -> float:
    """Seconds the projectors take to catch up as `service.serve` has them do it: with replay
    helpers as configured (`HW_REPLAY_HELPERS_FROM`), or all in this process one after another."""
    start = time.perf_counter()
    await catch_up(
        running,
        service="scheduler",
        nats_url=url,
        helpers_from=Settings().replay_helpers_from if helpers else 0,
        timeout=READY_TIMEOUT,
        stop=asyncio.Event(),
    )
    return time.perf_counter() - start


def _errors(errors: Counter[str]) -> str:
    return "(" + (", ".join(f"{n} {name}" for name, n in errors.items()) or "no errors") + ")"


async def connect(url: str, errors: Counter[str]) -> Any:
    """A connection of its own (as a process starting has), set to reconnect as the services'
    (`hw_events.service.connect`), counting the errors it reports: the server cutting off a client
    that reads too slowly shows as `UnexpectedEOF`."""

    async def count(err: Exception) -> None:
        errors[type(err).__name__] += 1

    return await nats.connect(
        url, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=count
    )


async def raw_replay(url: str, counts: Counter[str], errors: Counter[str], *, together: bool = True) -> float:
    """The baseline, one of two ways (the faster counts): nats-py ordered consumers counting every
    message of both streams at once, each on a connection of its own (two on one connection are
    cut off as slow consumers when the messages are big: each may have as much in flight as the
    connection is allowed), or with `together=False` one stream after the other."""
    loop = asyncio.get_running_loop()
    connections, waits = [], []
    for _ in (streams.FS, streams.PPS):
        connections.append(await connect(url, errors))
    start = time.perf_counter()
    for nc, spec in zip(connections, (streams.FS, streams.PPS), strict=True):
        done = loop.create_future()
        waits.append(done)
        cb = count_to(counts[spec.name], done)
        await nc.jetstream().subscribe(spec.subjects[0], stream=spec.name, cb=cb, ordered_consumer=True)
        if not together:
            await done
    await asyncio.gather(*waits)
    elapsed = time.perf_counter() - start
    for nc in connections:
        await nc.close()
    return sum(counts.values()) / elapsed


async def projector_replay(
    url: str, counts: Counter[str], errors: Counter[str], *, helpers: bool = True
) -> tuple[float, int]:
    """Headwater: the scheduler's two projections replayed from the start on one connection, as
    the service does (see `start_and_wait`); events/s, and how many messages this process read
    more than once."""
    nc = await connect(url, errors)
    running = projectors(nc, None)
    elapsed = await start_and_wait(running, url, helpers=helpers)
    again = 0
    for projector in running:
        assert projector.applied == counts[projector.stream.name], (projector.stream.name, projector.applied)
        # A consumer reset after the server cut the connection delivers some messages again.
        again += max(0, projector.read - counts[projector.stream.name])
        await projector.stop(snapshot=False)
    await nc.close()
    return sum(counts.values()) / elapsed, again


def describe(running: list[Projector[Any]]) -> None:
    """What the state holds, and what encoding it costs (each snapshot saved does it)."""
    for projector in running:
        state = projector.state
        if hasattr(state, "jobs"):
            jobs = [job for by_id in state.jobs.values() for job in by_id.values()]
            results = sum(len(job.results) for job in jobs)
            finished = sum(1 for job in jobs if job.final)
            progress(
                f"  {projector.projection.name}: {len(jobs):,} jobs ({finished:,} finished), "
                f"{results:,} datum results kept"
            )
        if hasattr(state, "repos"):
            commits = sum(len(repo.commits) for repo in state.repos.values())
            progress(f"  {projector.projection.name}: {len(state.repos)} repos, {commits:,} commits kept")
        start = time.perf_counter()
        size = len(msgspec.msgpack.encode(state))
        progress(
            f"  {projector.projection.name}: state {size / 1e6:,.1f} MB as msgpack, "
            f"encoded in {time.perf_counter() - start:.2f}s"
        )


async def snapshot_costs(url: str, keys: list[tuple[str, type[Any]]]) -> float:
    """Load and decode each saved snapshot apart from a restart, to show where a restart's time
    goes; returns the seconds a restart spends on them."""
    nc = await connect(url, Counter())
    store = SnapshotStore(nc.jetstream())
    total = 0.0
    for key, state_type in keys:
        start = time.perf_counter()
        stored = await store._load_stored(key)  # as stored (compressed when big)
        read = time.perf_counter() - start
        start = time.perf_counter()
        data = await store.load(key)
        loaded = time.perf_counter() - start
        assert stored is not None, key
        assert data is not None, key
        start = time.perf_counter()
        snapshot = snapshots.decode(data)
        msgspec.msgpack.Decoder(state_type).decode(snapshot.state)
        decoded = time.perf_counter() - start
        total += loaded + decoded
        progress(
            f"  snapshot {key}: {len(data) / 1e6:,.1f} MB, stored as {len(stored) / 1e6:,.1f} MB "
            f"(read in {read:.2f}s); SnapshotStore.load {loaded:.2f}s; decoded in {decoded:.2f}s"
        )
        del data, stored, snapshot
        gc.collect()
    await nc.close()
    return total


async def timed_restart(url: str) -> tuple[float | None, list[int]]:
    """Seconds a restarted scheduler's projectors take from start to ready with snapshots (None:
    gave up), and how many events each read after its snapshot."""
    nc = await connect(url, Counter())  # a process of its own would have its own connection
    running = projectors(nc, SnapshotStore(nc.jetstream()))
    try:
        ready = await asyncio.wait_for(start_and_wait(running, url), RESTART_TIMEOUT)
        return ready, [p.read for p in running]
    except TimeoutError:
        return None, [p.read for p in running]
    finally:
        for projector in running:
            await projector.stop(snapshot=False)  # each run starts from the same snapshots
        await nc.close()


async def restart(url: str, n: int = 1_000_000, runs: int = 3) -> list[Result]:
    """Both measurements over one log of `n` events (plus the tail)."""
    nc = await connect(url, Counter())
    js = nc.jetstream()
    await streams.ensure_streams(js, (streams.FS, streams.PPS))
    for spec in (streams.FS, streams.PPS):
        if (await js.stream_info(spec.name)).state.messages:
            raise RuntimeError(
                f"{spec.name} is not empty: the replay benchmark needs a throwaway nats-server"
            )
    writer = LogWriter(nc)
    log = timeline()
    progress(f"writing a {n:,}-event scheduler log ({PIPELINES} pipelines)...")
    await writer.write(log, n, "scheduler log")
    counts = Counter(writer.counts)
    total = sum(counts.values())
    progress(
        f"  {dict(counts)}; {writer.types['JobCreated']:,} jobs, "
        f"{writer.types['DatumsFinished']:,} DatumsFinished with {writer.results:,} results"
    )

    raw, raw_apart, ours, alone = [], [], [], []
    with services_gc():
        for run in range(runs):
            raw_errors: Counter[str] = Counter()
            raw.append(await raw_replay(url, counts, raw_errors))
            gc.collect()
            raw_apart.append(await raw_replay(url, counts, raw_errors, together=False))
            gc.collect()
            before, errors = rss_mb(), Counter[str]()
            rate, again = await projector_replay(url, counts, errors)
            ours.append(rate)
            gc.collect()
            alone.append((await projector_replay(url, counts, errors, helpers=False))[0])
            progress(
                f"  replay run {run + 1}: raw {raw[-1]:,.0f}/s at once, {raw_apart[-1]:,.0f}/s one "
                f"stream after the other {_errors(raw_errors)}; projectors {rate:,.0f}/s "
                f"({alone[-1]:,.0f}/s in this process alone) {_errors(errors)}, "
                f"{again} messages read twice (RSS {before:,.0f} -> {rss_mb():,.0f} MB)"
            )
            gc.collect()
        baseline = max(median_of(raw), median_of(raw_apart))
        progress(
            f"  in this process alone (no helper): {median_of(alone) / baseline:.2f} of the faster raw "
            f"(medians: {median_of(alone) / median_of(raw):.2f} of raw at once, "
            f"{median_of(alone) / median_of(raw_apart):.2f} of raw one after the other)"
        )

        # The snapshots a scheduler that ran a while has: its state saved on stop. (On its way it
        # saves every 10,000 events, at most once per 5 s; each save costs what this one does.)
        store = SnapshotStore(js)
        running = projectors(nc, store, snapshot_every=2**62)
        primed = await start_and_wait(running, url)
        progress(f"  replayed again to save snapshots in {primed:.1f}s")
        describe(running)
        start = time.perf_counter()
        for projector in running:
            await projector.stop(snapshot=True)
        progress(f"  snapshots saved on stop in {time.perf_counter() - start:.1f}s")
        del running
        gc.collect()
        keys = [(p.snapshot_key, p.projection.state_type) for p in projectors(nc, None)]
        loading = await snapshot_costs(url, keys)

        tail = max(1, int(n * TAIL))
        await writer.write(log, tail, "tail")
        restarts: list[float] = []
        for run in range(runs):
            ready, read = await timed_restart(url)
            gc.collect()
            if ready is None:
                progress(f"  restart run {run + 1}: not ready after {RESTART_TIMEOUT:g}s (read {read})")
                break
            restarts.append(ready)
            progress(f"  restart run {run + 1}: ready in {ready:.2f}s (read {read} after the snapshots)")
            if ready > 10 * RESTART_GOAL:
                break  # far off the goal: one run says enough
        progress(f"  (snapshot loads and decodes alone: {loading:.1f}s)")
    await nc.close()
    gave_up = f", gave up at {RESTART_TIMEOUT:g} s" if not restarts else ""
    return [
        Result(
            f"scheduler replay of {total:,} events, no snapshot",
            median_of(ours),
            baseline,
            "events/s",
            "raw ordered consumers, the faster way",
            ">= 0.80",
            lambda r: r.ratio >= 0.8,
        ),
        Result(
            f"scheduler restart from snapshots + {tail:,} events{gave_up}",
            median_of(restarts) if restarts else RESTART_TIMEOUT,
            total / median_of(ours),
            "s",
            "replay from the start",
            f"< {RESTART_GOAL:g} s",
            lambda r: bool(restarts) and r.headwater < RESTART_GOAL,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100,000 events instead of 1,000,000")
    parser.add_argument("-n", type=int, default=0, help="events in the log")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)
    with (
        tempfile.TemporaryDirectory(prefix="hw-bench-nats-") as workdir,
        nats_server(Path(workdir)) as server,
    ):
        progress(f"nats-server at {server.url}")
        results = asyncio.run(restart(server.url, n=n, runs=args.runs))
    print()
    print_table(results)


if __name__ == "__main__":
    main()
