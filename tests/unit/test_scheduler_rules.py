"""The scheduler's rules: which commits are jobs and what they read, which job runs next, and what
creating, updating and deleting a pipeline decide. The file store's own decisions make the events,
so the view is fed exactly what fs would write."""

from __future__ import annotations

import functools
import operator
from datetime import timedelta
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_events.errors import AlreadyExists, NotFound, UserError
from hw_events.fs import (
    CreateBranch,
    CreateRepo,
    FinishOutputCommit,
    OpenOutputCommit,
    RepoCreated,
    RepoDeleted,
)
from hw_events.messages import Envelope, Event, header_of
from hw_events.pipeline_spec import PipelineSpec, parse_pipeline_spec
from hw_events.pps import (
    FAILURE,
    KILLED,
    DatumFinished,
    DatumsFinished,
    DatumsQueued,
    JobCreated,
    JobFinished,
    JobRebased,
    JobResultsStored,
    JobStarted,
    PipelineUpdated,
    PlannedDatum,
    Tally,
)
from hw_events.projection import Projection
from hw_fs import domain as fs_domain
from hw_fs.domain import FsState, Summary, WriteTarget
from hw_scheduler import domain
from hw_scheduler.domain import FsView, PpsState
from tests.unit.fs_events import T0, at, cid

S = TypeVar("S")


def as_read(projection: Projection[Any], event: Event) -> Any:
    """The event as `projection`'s projector reads it off the log: its JSON decoded as one of the
    projection's types (None for a type it does not know: the projector skips those)."""
    union: Any = functools.reduce(operator.or_, projection.event_types)
    try:
        return msgspec.json.decode(msgspec.json.encode(event), type=union)
    except msgspec.ValidationError:
        return None


def replayed(projection: Projection[S], state: S, event: Event, *, by_header: bool) -> S:
    """`state` with `event` folded in as a projector reads it off the log: decoded from its JSON
    (skipped if not one of the projection's types) or, `by_header` (as a replay reads all but the
    newest events), given as stored to the projection's fold for its `Hw-Event` header, if any."""
    tag, _, about = header_of(event).partition(" ")
    fold = projection.header_folds.get(tag) if by_header else None
    if fold is not None:
        stored = Envelope(id="e", aggregate="a", version=1, time=T0, command="c", event=event)
        return fold(state, about, msgspec.json.encode(stored))
    read = as_read(projection, event)
    return state if read is None else projection.evolve(state, read)


class World:
    """fs state, the scheduler's view of it, and the scheduler's own state, moved together. The
    scheduler's projections get each event as they read it off the log: decoded, or `by_header`."""

    def __init__(self, *, by_header: bool = False) -> None:
        self.fs = FsState()
        self.view = FsView()
        self.pps = PpsState()
        self.n = 0
        self.by_header = by_header

    def fs_apply(self, writes: dict[str, list[Event]]) -> None:
        for events in writes.values():
            for event in events:
                fs_domain.evolve(self.fs, event)  # type: ignore[arg-type]
                self.view = replayed(domain.FS_VIEW, self.view, event, by_header=self.by_header)

    def pps_apply(self, events: list[Event] | dict[str, list[Event]]) -> None:
        for event in events if isinstance(events, list) else [e for es in events.values() for e in es]:
            self.pps = replayed(domain.PPS, self.pps, event, by_header=self.by_header)

    def repo(self, name: str) -> None:
        self.fs_apply({name: fs_domain.decide_create_repo(self.fs, CreateRepo(repo=name), T0)})

    def put(self, repo: str, branch: str) -> str:
        """A one-off commit on `branch`, as `put file` makes it; its id."""
        self.n += 1
        set_id = cid(self.n)
        target = fs_domain.write_target(self.fs, repo, branch)
        self.fs_apply(
            fs_domain.decide_write(
                self.fs,
                repo,
                branch,
                planned=WriteTarget(*target),
                layer=f"layers/{self.n}",
                counts=(1, 1),
                summary=Summary((f"layers/{self.n}",), 1, 1),
                set_id=set_id,
                description="",
                now=at(self.n),
            )
        )
        return set_id

    def branch(self, repo: str, branch: str, *, head: str = "", provenance: list[str] | None = None) -> str:
        self.n += 1
        command = CreateBranch(repo=repo, branch=branch, head=head, provenance=provenance or [])
        self.fs_apply(fs_domain.decide_create_branch(self.fs, command, cid(1000 + self.n), at(self.n)))
        return cid(1000 + self.n)

    def pipeline(self, spec: PipelineSpec) -> None:
        self.pps_apply(domain.decide_create_pipeline(self.pps, self.view, spec, salt="salt", now=T0))
        self.repo(spec.name)
        self.branch(spec.name, spec.output_branch, provenance=domain.input_sources(spec))

    def create_jobs(self) -> list[JobCreated]:
        created = list(domain.new_jobs(self.pps, self.view))
        self.pps_apply(list(created))
        return created


def spec(name: str = "count", repo: str = "data", branch: str = "master", **more: object) -> PipelineSpec:
    return parse_pipeline_spec(
        {
            "pipeline": {"name": name},
            "transform": {"cmd": ["true"]},
            "input": {"pfs": {"repo": repo, "branch": branch, "glob": "/*"}},
            **more,
        }
    )


@pytest.fixture(params=[False, True], ids=["decoded", "by-header"])
def world(request: pytest.FixtureRequest) -> World:
    return a_world(by_header=request.param)


def a_world(*, by_header: bool = False) -> World:
    w = World(by_header=by_header)
    w.repo("data")
    w.put("data", "master")
    return w


def test_creating_a_pipeline_makes_a_job_over_the_current_input_head(world: World) -> None:
    head = world.fs.repos["data"].branches["master"].head
    world.pipeline(spec())
    (job,) = world.create_jobs()
    assert job.pipeline == "count"
    assert job.version == 1
    assert [(i.name, i.repo, i.branch, i.commit) for i in job.inputs] == [("data", "data", "master", head)]
    assert world.create_jobs() == []  # once


def test_each_commit_on_the_input_is_a_job_named_after_it_that_reads_it(world: World) -> None:
    world.pipeline(spec())
    world.create_jobs()
    commit = world.put("data", "master")
    (job,) = world.create_jobs()
    assert job.job == commit
    assert job.inputs[0].commit == commit


def test_jobs_start_in_order_without_waiting_for_earlier_ones_to_end(world: World) -> None:
    world.pipeline(spec())
    first = world.create_jobs()[0].job
    second = world.put("data", "master")
    third = world.put("data", "master")
    world.create_jobs()
    assert domain.next_job(world.pps, "count").id == first  # type: ignore[union-attr]
    assert domain.running_before(world.pps, "count", first) is None
    world.pps_apply(
        [JobStarted(pipeline="count", job=first, started=T0, plan="p1", total=1, skipped=0, to_run=1)]
    )
    assert domain.next_job(world.pps, "count").id == second  # type: ignore[union-attr]
    assert domain.running_before(world.pps, "count", second).id == first  # type: ignore[union-attr]
    started = JobStarted(
        pipeline="count", job=second, started=T0, plan="p2", total=2, skipped=0, to_run=1, after=first
    )
    world.pps_apply([started, DatumsQueued(pipeline="count", job=second)])
    job = world.pps.jobs["count"][second]
    assert domain.running_before(world.pps, "count", third).id == second  # type: ignore[union-attr]
    # The datum that need not wait reports; the job still waits for the first to end.
    world.pps_apply([DatumFinished(pipeline="count", job=second, datum="d", state="success")])
    assert (job.state, job.all_reported, list(domain.jobs_to_finish(world.pps))) == ("running", False, [])
    assert list(domain.jobs_to_rebase(world.pps)) == []
    world.pps_apply([JobFinished(pipeline="count", job=first, state="success", finished=T0, index="i")])
    assert [j.id for j in domain.jobs_to_rebase(world.pps)] == [second]
    assert domain.base_job(world.pps, "count", second).id == first  # type: ignore[union-attr]
    rebased = JobRebased(
        pipeline="count", job=second, rebased=T0, plan="p2b", base=first, skipped=1, to_run=1
    )
    world.pps_apply(domain.decide_rebased(job, rebased))
    assert domain.decide_rebased(job, rebased) == []  # once
    assert (job.plan, job.base, job.skipped, job.queued, job.queues_waiting) == ("p2b", first, 1, False, True)
    world.pps_apply(domain.decide_queued(job))
    assert [j.id for j in domain.jobs_to_finish(world.pps)] == [second]


def test_a_job_is_rebased_only_once_every_earlier_job_ended(world: World) -> None:
    world.pipeline(spec())
    first = world.create_jobs()[0].job
    second, third = world.put("data", "master"), world.put("data", "master")
    world.create_jobs()
    for job, after in ((first, None), (second, first), (third, second)):
        started = JobStarted(
            pipeline="count", job=job, started=T0, plan="p", total=1, skipped=0, to_run=0, after=after
        )
        world.pps_apply([started, DatumsQueued(pipeline="count", job=job)])
    assert list(domain.jobs_to_rebase(world.pps)) == []
    # The second fails (timeout, say) while the first still runs: the third still waits.
    world.pps_apply([JobFinished(pipeline="count", job=second, state="killed", finished=T0, reason="x")])
    assert list(domain.jobs_to_rebase(world.pps)) == []
    world.pps_apply([JobFinished(pipeline="count", job=first, state="success", finished=T0, index="i")])
    assert [j.id for j in domain.jobs_to_rebase(world.pps)] == [third]
    assert domain.base_job(world.pps, "count", third).id == first  # type: ignore[union-attr]


def test_a_job_that_waited_counts_its_timeout_from_its_rebase_and_sets_aside_what_it_need_not_have_run(
    world: World,
) -> None:
    world.pipeline(spec(job_timeout="30s"))
    first = world.create_jobs()[0].job
    second = world.put("data", "master")
    world.create_jobs()
    world.pps_apply(
        [
            JobStarted(pipeline="count", job=first, started=T0, plan="p", total=1, skipped=0, to_run=1),
            JobStarted(
                pipeline="count", job=second, started=T0, plan="p", total=3, skipped=0, to_run=2, after=first
            ),
            DatumsQueued(pipeline="count", job=second),
            DatumFinished(pipeline="count", job=second, datum="early", state="failed"),
        ]
    )
    job = world.pps.jobs["count"][second]
    late = T0 + timedelta(minutes=5)
    assert [j.id for j, _ in domain.timed_out(world.pps, late)] == [first]  # not the one waiting on it
    world.pps_apply([JobFinished(pipeline="count", job=first, state="failure", finished=late, reason="x")])
    rebased = JobRebased(
        pipeline="count", job=second, rebased=late, plan="p2", skipped=2, to_run=1, dropped=["early"]
    )
    world.pps_apply(domain.decide_rebased(job, rebased))
    assert (job.results, job.state, job.to_run) == ({}, "running", 1)  # the early result set aside
    world.pps_apply(
        domain.decide_record_datums(
            world.pps,
            "count",
            second,
            [
                DatumFinished(pipeline="count", job=second, datum="early", state="success"),
            ],
        )
    )
    assert job.results == {}  # a late report of it too
    assert list(domain.timed_out(world.pps, late + timedelta(seconds=29))) == []
    assert [j.id for j, _ in domain.timed_out(world.pps, late + timedelta(seconds=31))] == [second]


def test_queueing_sends_what_need_not_wait_first_and_the_waiting_datums_after_the_rebase() -> None:
    job = domain.Job(pipeline="p", id="j", version=1, inputs=[], created=T0, after="e", rebased=False)
    now, waits, kept = (
        PlannedDatum("a", "h", []),
        PlannedDatum("b", "h", [], wait=True),
        PlannedDatum("c", "h", [], skip=True, wait=True),
    )
    assert [d.id for d in (now, waits, kept) if domain.queues(job, d)] == ["a"]
    job.rebased = True
    assert [d.id for d in (now, waits, kept) if domain.queues(job, d)] == ["b"]
    alone = domain.Job(pipeline="p", id="k", version=1, inputs=[], created=T0, rebased=True)
    assert [d.id for d in (now, PlannedDatum("d", "h", [], skip=True)) if domain.queues(alone, d)] == ["a"]


def test_a_failed_job_is_never_the_base_of_the_next(world: World) -> None:
    world.pipeline(spec())
    first = world.create_jobs()[0].job
    world.pps_apply([JobFinished(pipeline="count", job=first, state="failure", finished=T0, reason="x")])
    second = world.put("data", "master")
    world.create_jobs()
    assert domain.base_job(world.pps, "count", second) is None


def test_stopping_kills_unfinished_jobs_and_starting_runs_one_over_the_inputs(world: World) -> None:
    world.pipeline(spec())
    job = world.create_jobs()[0].job
    world.pps_apply(domain.decide_stop_pipeline(world.pps, "count", T0))
    assert (world.pps.jobs["count"][job].final, world.pps.jobs["count"][job].reason) == (
        KILLED,
        domain.KILLED_BY_STOP,
    )
    world.fs_apply(
        fs_domain.decide_finish_output_commit(
            world.fs, fs_domain_finish("count", job, error="killed"), None, T0
        )
    )
    world.put("data", "master")  # a job is made while stopped, but does not start
    (waiting,) = world.create_jobs()
    assert domain.next_job(world.pps, "count") is None
    assert list(domain.needs_new_output(world.pps, world.view)) == []
    world.pps_apply(domain.decide_start_pipeline(world.pps, "count", T0))
    assert domain.next_job(world.pps, "count").id == waiting.job  # type: ignore[union-attr]
    assert list(domain.needs_new_output(world.pps, world.view)) == []  # that job covers the inputs


def test_starting_after_a_stop_with_nothing_new_opens_a_job_over_the_inputs(world: World) -> None:
    world.pipeline(spec())
    job = world.create_jobs()[0].job
    world.pps_apply(domain.decide_stop_pipeline(world.pps, "count", T0))
    world.fs_apply(
        fs_domain.decide_finish_output_commit(
            world.fs, fs_domain_finish("count", job, error="killed"), None, T0
        )
    )
    world.pps_apply(domain.decide_start_pipeline(world.pps, "count", T0))
    assert [p.name for p in domain.needs_new_output(world.pps, world.view)] == ["count"]


def test_a_hand_move_makes_a_job_named_after_the_commit_moved_to(world: World) -> None:
    world.pipeline(spec())
    world.create_jobs()
    staged = world.put("data", "staging")
    world.put("data", "staging")
    world.branch("data", "master", head="staging^1")
    (job,) = world.create_jobs()
    assert job.job == staged
    assert job.inputs[0].commit == staged


def test_a_job_waits_for_its_input_commit_and_fails_when_upstream_failed(world: World) -> None:
    world.pipeline(spec())
    world.pipeline(spec("second", repo="count"))
    world.create_jobs()
    second_job = next(iter(world.pps.jobs["second"].values()))
    assert domain.input_problem(world.view, second_job) == (False, "")  # count's output is open
    upstream = second_job.inputs[0].commit
    world.fs_apply(
        fs_domain.decide_finish_output_commit(
            world.fs, fs_domain_finish("count", upstream, error="failure: datum x failed"), None, T0
        )
    )
    ready, reason = domain.input_problem(world.view, second_job)
    assert ready
    assert "upstream pipelines failed: count" in reason


def fs_domain_finish(repo: str, commit: str, *, error: str = "") -> FinishOutputCommit:
    return FinishOutputCommit(repo=repo, commit=commit, error=error)


def test_update_keeps_the_salt_kills_running_jobs_and_reprocess_changes_the_salt(world: World) -> None:
    world.pipeline(spec())
    job = world.create_jobs()[0].job
    writes = domain.decide_update_pipeline(
        world.pps, world.view, spec(), reprocess=False, new_salt="new", now=T0
    )
    events = [e for es in writes.values() for e in es]
    updated = next(e for e in events if isinstance(e, PipelineUpdated))
    assert (updated.version, updated.salt) == (2, "salt")
    (killed,) = [e for e in events if isinstance(e, JobFinished)]
    assert (killed.job, killed.state, killed.reason) == (job, KILLED, domain.KILLED_BY_UPDATE)
    again = domain.decide_update_pipeline(
        world.pps, world.view, spec(), reprocess=True, new_salt="new", now=T0
    )
    assert next(e for es in again.values() for e in es if isinstance(e, PipelineUpdated)).salt == "new"


def test_update_opens_a_new_output_commit_whose_job_uses_the_new_version(world: World) -> None:
    world.pipeline(spec())
    first = world.create_jobs()[0].job
    world.fs_apply(
        fs_domain.decide_finish_output_commit(
            world.fs, fs_domain_finish("count", first), Summary((), 0, 0), T0
        )
    )
    world.pps_apply(
        domain.decide_update_pipeline(world.pps, world.view, spec(), reprocess=False, new_salt="n", now=T0)
    )
    world.fs_apply(
        fs_domain.decide_open_output_commit(
            world.fs, OpenOutputCommit(repo="count", branch="master"), cid(77), T0
        )
    )
    (job,) = world.create_jobs()
    assert (job.job, job.version) == (cid(77), 2)


def test_an_ended_jobs_results_leave_memory_and_its_totals_stay(world: World) -> None:
    world.pipeline(spec())
    job_id = world.create_jobs()[0].job
    world.pps_apply(
        [JobStarted(pipeline="count", job=job_id, started=T0, plan="p", total=3, skipped=0, to_run=3)]
    )
    results = [
        DatumFinished(pipeline="count", job=job_id, datum="a", state="success", seconds=1.0, attempts=2),
        DatumFinished(
            pipeline="count", job=job_id, datum="b", state="recovered", seconds=3.0, upload_bytes=5
        ),
        DatumFinished(pipeline="count", job=job_id, datum="c", state="success", download_bytes=7),
    ]
    world.pps_apply(domain.decide_record_datums(world.pps, "count", job_id, results))
    job = world.pps.jobs["count"][job_id]
    stored = JobResultsStored(pipeline="count", job=job_id, results="results/x")
    assert domain.decide_results_stored(job, stored) == []  # not while it runs
    assert list(domain.results_to_store(world.pps)) == []
    world.pps_apply([JobFinished(pipeline="count", job=job_id, state="success", finished=T0, index="i")])
    before = domain.job_info(job)
    assert [j.id for j in domain.results_to_store(world.pps)] == [job_id]
    assert list(world.pps.active["count"]) == [job_id]  # still something to do
    world.pps_apply(domain.decide_results_stored(job, stored))
    assert world.pps.active["count"] == {}  # nothing left: the scheduler's pass no longer looks at it
    assert (job.results, job.stored, domain.decide_results_stored(job, stored)) == ({}, "results/x", [])
    assert domain.job_info(job) == before
    assert (before.data_processed, before.data_recovered, before.restarts) == (2, 1, 1)
    assert (before.download_bytes, before.upload_bytes) == (7, 5)
    assert domain.datum_seconds(job) == pytest.approx(4.0 / 3)
    assert list(domain.results_to_store(world.pps)) == []


def _running_job(world: World, *, after: str | None = None) -> str:
    world.pipeline(spec())
    job_id = world.create_jobs()[0].job
    started = JobStarted(
        pipeline="count", job=job_id, started=T0, plan="p", total=9, skipped=0, to_run=9, after=after
    )
    world.pps_apply([started])
    return job_id


def _result(job_id: str, datum: str, state: str = "success", seconds: float = 1.0) -> DatumFinished:
    return DatumFinished(pipeline="count", job=job_id, datum=datum, state=state, seconds=seconds, files=1)


def test_a_replay_leaves_an_ended_jobs_reports_undecoded_and_reads_its_totals_off_the_log(
    world: World,
) -> None:
    job_id = _running_job(world)
    reports = [
        DatumsFinished(pipeline="count", job=job_id, results=[_result(job_id, "a"), _result(job_id, "b")]),
        DatumsFinished(pipeline="count", job=job_id, results=[_result(job_id, "c", "failed", 4.0)]),
    ]
    world.pps_apply([*reports, JobFinished(pipeline="count", job=job_id, state=FAILURE, finished=T0)])
    job = world.pps.jobs["count"][job_id]
    assert (job.reported, len(job.unread)) == ({}, 2)  # nothing decoded yet
    totals = Tally(datums=3, processed=2, failed=1, seconds=6.0)
    world.pps_apply([JobResultsStored(pipeline="count", job=job_id, results="results/x", tally=totals)])
    assert (job.reported, job.unread, job.tally) == ({}, [], totals)  # never decoded
    assert world.pps.active["count"] == {}
    assert domain.job_info(job).data_failed == 1


def test_reports_read_off_the_log_are_decoded_when_the_job_needs_them(world: World) -> None:
    job_id = _running_job(world)
    world.pps_apply(
        [
            DatumsFinished(pipeline="count", job=job_id, results=[_result(job_id, "a", seconds=1.0)]),
            DatumsFinished(pipeline="count", job=job_id, results=[_result(job_id, "b", "failed")]),
        ]
    )
    job = world.pps.jobs["count"][job_id]
    assert domain.failure_reason(job) == "datum b failed"
    assert [r.datum for r in job.results.values()] == ["a", "b"]
    assert job.unread == []
    # A snapshot holds what is still unread as it is, and a state read back from it knows the same.
    world.pps_apply([DatumsFinished(pipeline="count", job=job_id, results=[_result(job_id, "c")])])
    encoded = msgspec.msgpack.encode(world.pps)
    restored = msgspec.msgpack.decode(encoded, type=PpsState).jobs["count"][job_id]
    assert len(restored.unread) == 1
    assert list(restored.results) == ["a", "b", "c"]
    assert restored.tally == job.tally


def test_a_report_that_is_not_results_is_skipped_and_loses_no_other(world: World) -> None:
    job_id = _running_job(world, after="earlier")
    bad = domain.DatumsReported(pipeline="count", job=job_id, results=msgspec.Raw(b'[{"datum": 7}]'))
    domain.evolve(world.pps, bad)
    for body in (b"not json", b'{"event": {"results": [{"datum": 7}]}}', b'{"event": {}}'):
        domain.report_by_header(world.pps, f"count {job_id}", body)  # (its header said it was one)
    world.pps_apply([DatumsFinished(pipeline="count", job=job_id, results=[_result(job_id, "a")])])
    world.pps_apply([JobRebased(pipeline="count", job=job_id, rebased=T0, plan="p2", skipped=0, to_run=1)])
    job = world.pps.jobs["count"][job_id]
    assert list(job.results) == ["a"]
    assert (job.rebased, job.all_reported) == (True, True)


DATUMS = st.lists(st.sampled_from("abcde"), min_size=1, max_size=4)
REPORT_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), DATUMS),
        st.tuples(st.just("one"), DATUMS),
        st.tuples(st.just("rebase"), st.lists(st.sampled_from("abcde"), max_size=2)),
        st.tuples(st.sampled_from(["read", "finish", "store"]), st.just([])),
    ),
    max_size=14,
)


@given(REPORT_STEPS, st.lists(st.booleans(), min_size=1))
def test_reports_read_lazily_hold_what_reading_each_at_once_gives(
    steps: list[tuple[str, list[str]]], headers: list[bool]
) -> None:
    """The first result of each datum, in the order reported, none of a dropped one, same totals,
    and the same job state and work left, whenever the lazy side happens to decode; and so when
    reports are read by their header or decoded, some one way and some the other (as a replay
    reads all but the newest events by header)."""
    eager, lazy, by_header = a_world(), a_world(), a_world()
    job_ids = {_running_job(w, after="earlier") for w in (eager, lazy, by_header)}
    assert len(job_ids) == 1
    job_id = job_ids.pop()

    def seen(world: World) -> tuple[object, ...]:
        job = world.pps.jobs["count"][job_id]
        return (
            job.state,
            job.has_results,
            list(world.pps.active["count"]),
            [j.id for j in domain.results_to_store(world.pps)],
        )

    for n, (kind, datums) in enumerate(steps):
        results = [
            _result(job_id, d, ("success", "failed", "recovered")[(n + i) % 3], seconds=n + i / 10)
            for i, d in enumerate(datums)
        ]
        event: Event | None = None
        if kind == "batch":
            event = DatumsFinished(pipeline="count", job=job_id, results=results)
        elif kind == "one":
            event = results[0]
        elif kind == "rebase":
            event = JobRebased(
                pipeline="count", job=job_id, rebased=T0, plan="p2", skipped=0, to_run=9, dropped=datums
            )
        elif kind == "finish":
            event = JobFinished(pipeline="count", job=job_id, state=FAILURE, finished=T0)
        elif kind == "store":  # (as written before events carried the totals)
            event = JobResultsStored(pipeline="count", job=job_id, results=f"results/{n}")
        else:
            for world in (lazy, by_header):
                world.pps.jobs["count"][job_id].results  # noqa: B018 - a read, as the scheduler's pass makes
        if event is not None:
            domain.evolve(eager.pps, event)  # type: ignore[arg-type]  # (decoded at once, as built)
            lazy.pps_apply([event])
            by_header.pps = replayed(domain.PPS, by_header.pps, event, by_header=headers[n % len(headers)])
        assert seen(lazy) == seen(by_header) == seen(eager)
    first = eager.pps.jobs["count"][job_id]
    for world in (lazy, by_header):
        other = world.pps.jobs["count"][job_id]
        assert list(other.results.items()) == list(first.results.items())
        assert other.tally == first.tally


def test_what_create_update_and_delete_refuse(world: World) -> None:
    with pytest.raises(NotFound, match='input repo "nope" not found'):
        domain.decide_create_pipeline(world.pps, world.view, spec(repo="nope"), salt="s", now=T0)
    with pytest.raises(AlreadyExists, match='a repo named "data" already exists'):
        domain.decide_create_pipeline(world.pps, world.view, spec("data"), salt="s", now=T0)
    world.pipeline(spec())
    with pytest.raises(AlreadyExists, match="update pipeline"):
        domain.decide_create_pipeline(world.pps, world.view, spec(), salt="s", now=T0)
    world.put("data", "other")
    with pytest.raises(UserError, match="cannot change which branches it reads"):
        domain.decide_update_pipeline(
            world.pps, world.view, spec(branch="other"), reprocess=False, new_salt="", now=T0
        )
    world.pipeline(spec("second", repo="count"))
    with pytest.raises(UserError, match='pipeline "second" reads the output of "count"'):
        domain.decide_delete_pipeline(world.pps, "count", T0)


def test_a_worker_report_lands_once_and_not_after_the_job_ended(world: World) -> None:
    world.pipeline(spec())
    job = world.create_jobs()[0].job
    world.pps_apply(
        [JobStarted(pipeline="count", job=job, started=T0, plan="p", total=2, skipped=0, to_run=2)]
    )
    report = DatumFinished(pipeline="count", job=job, datum="d1", state="success")
    world.pps_apply(domain.decide_record_datums(world.pps, "count", job, [report]))
    assert domain.decide_record_datums(world.pps, "count", job, [report]) == []
    with pytest.raises(UserError, match="not one a worker reports"):
        domain.decide_record_datums(
            world.pps, "count", job, [DatumFinished(pipeline="count", job=job, datum="d2", state="skipped")]
        )
    world.pps_apply([JobFinished(pipeline="count", job=job, state=KILLED, finished=T0)])
    assert (
        domain.decide_record_datums(
            world.pps, "count", job, [DatumFinished(pipeline="count", job=job, datum="d2", state="success")]
        )
        == []
    )


def test_a_batch_report_records_only_new_results_once_each(world: World) -> None:
    world.pipeline(spec())
    job = world.create_jobs()[0].job
    world.pps_apply(
        [
            JobStarted(pipeline="count", job=job, started=T0, plan="p", total=3, skipped=0, to_run=3),
            DatumsQueued(pipeline="count", job=job),
        ]
    )

    def result(datum: str, state: str = "success") -> DatumFinished:
        return DatumFinished(pipeline="count", job=job, datum=datum, state=state)

    world.pps_apply(domain.decide_record_datums(world.pps, "count", job, [result("d1")]))
    # The whole batch reported again (a worker that took it over): only d2 and d3 are new.
    events = domain.decide_record_datums(
        world.pps, "count", job, [result("d1", "failed"), result("d2"), result("d3")]
    )
    assert [[r.datum for r in e.results] for e in events] == [["d2", "d3"]]  # type: ignore[attr-defined]
    world.pps_apply(events)
    assert world.pps.jobs["count"][job].results["d1"].state == "success"  # the first result stays
    assert world.pps.jobs["count"][job].state == "finishing"
    assert domain.decide_record_datums(world.pps, "count", job, [result("d2")]) == []
    with pytest.raises(UserError, match="holds a result of job other"):
        domain.decide_record_datums(
            world.pps,
            "count",
            job,
            [DatumFinished(pipeline="count", job="other", datum="d9", state="success")],
        )
    with pytest.raises(UserError, match="not one a worker reports"):
        domain.decide_record_datums(world.pps, "count", job, [result("d9", "pending")])


@pytest.mark.parametrize(
    ("to_run", "workers", "asked", "seconds", "size"),
    [
        (20, 2, 0, 0.0, 2),  # few datums: small batches, every worker gets several
        (7, 2, 0, 0.0, 1),
        (2000, 2, 0, 0.0, domain.FIRST_BATCH),  # how long a datum takes is not known yet
        (2000, 2, 0, 0.001, domain.MAX_BATCH),  # many quick ones: as large as allowed
        (2000, 2, 0, 0.1, 20),  # about BATCH_SECONDS of work each
        (2000, 2, 0, 30.0, 1),  # long datums go one by one
        (2000, 2, 5, 30.0, 5),  # datum_set_spec.number wins
        (2000, 2, 1000, 0.0, domain.MAX_BATCH),  # up to what one message holds
        (0, 1, 0, 0.0, 1),
    ],
)
def test_batch_size(to_run: int, workers: int, asked: int, seconds: float, size: int) -> None:
    assert domain.batch_size(to_run, workers, asked=asked, seconds_per_datum=seconds) == size


def test_batches_keep_to_a_count_and_to_what_one_message_holds() -> None:
    assert domain.batches([10] * 5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    big = domain.BATCH_BYTES // 2
    assert domain.batches([big, big, 1, big * 3, 1], 64) == [
        range(0, 2),
        range(2, 3),
        range(3, 4),  # too big even alone: goes alone
        range(4, 5),
    ]
    assert domain.batches([], 3) == []


def test_describe_input() -> None:
    crossed = parse_pipeline_spec(
        {
            "pipeline": {"name": "p"},
            "transform": {"cmd": ["true"]},
            "input": {
                "cross": [
                    {"pfs": {"repo": "a", "glob": "/*"}},
                    {"union": [{"pfs": {"repo": "b", "glob": "/"}}, {"pfs": {"repo": "c", "glob": "/*/*"}}]},
                ]
            },
        }
    )
    assert domain.describe_input(crossed.input) == "cross(a:/*, union(b:/, c:/*/*))"


def test_fs_finishes_only_open_output_commits_and_a_retry_changes_nothing(world: World) -> None:
    user_commit = world.fs.repos["data"].branches["master"].head
    with pytest.raises(UserError, match="is not a pipeline's output commit"):
        fs_domain.decide_finish_output_commit(world.fs, fs_domain_finish("data", user_commit), None, T0)
    world.pipeline(spec())
    job = world.create_jobs()[0].job
    finish = fs_domain_finish("count", job)
    world.fs_apply(
        fs_domain.decide_finish_output_commit(world.fs, finish, Summary(("layers/out",), 5, 1), T0)
    )
    commit = world.fs.repos["count"].commits[job]
    assert (commit.layers, commit.size_bytes, commit.error) == (("layers/out",), 5, "")
    assert fs_domain.decide_finish_output_commit(world.fs, finish, Summary((), 0, 0), T0) == {}


def test_a_failed_output_commit_holds_the_last_good_output_as_it_is_when_it_fails(world: World) -> None:
    world.pipeline(spec())
    first = world.create_jobs()[0].job
    second, third = world.put("data", "master"), world.put("data", "master")
    world.create_jobs()  # both opened while the first job's commit is still open

    def finish(job: str, summary: Summary | None, error: str = "") -> tuple[str, ...]:
        world.fs_apply(
            fs_domain.decide_finish_output_commit(
                world.fs, fs_domain_finish("count", job, error=error), summary, T0
            )
        )
        return world.fs.repos["count"].commits[job].layers

    assert finish(first, Summary(("layers/one",), 3, 1)) == ("layers/one",)
    assert finish(second, None, error="failure: x") == ("layers/one",)  # not the tree it was opened on
    assert finish(third, None, error="killed: y") == ("layers/one",)  # past the failed one


def test_a_job_running_past_job_timeout_is_to_be_killed(world: World) -> None:
    world.pipeline(spec(job_timeout="30s"))
    job = world.create_jobs()[0].job
    assert list(domain.timed_out(world.pps, at(60))) == []  # not started: waiting is not running
    world.pps_apply(
        [JobStarted(pipeline="count", job=job, started=at(0), plan="p", total=1, skipped=0, to_run=1)]
    )
    assert list(domain.timed_out(world.pps, T0 + timedelta(seconds=29))) == []
    ((late, reason),) = domain.timed_out(world.pps, T0 + timedelta(seconds=31))
    assert (late.id, reason) == (job, "job timed out after 30s (job_timeout)")


def test_an_ended_job_stays_ended_whatever_step_lands_late(world: World) -> None:
    world.pipeline(spec())
    job = world.create_jobs()[0].job
    world.pps_apply([JobFinished(pipeline="count", job=job, state=KILLED, reason="updated", finished=T0)])
    world.pps_apply([JobFinished(pipeline="count", job=job, state="success", finished=T0, index="i")])
    ended = world.pps.jobs["count"][job]
    assert (ended.final, ended.reason, ended.index) == (KILLED, "updated", "")


def test_an_update_is_followed_even_when_a_job_of_the_old_version_slipped_in(world: World) -> None:
    world.pipeline(spec())
    old = world.create_jobs()[0].job
    world.pps_apply(
        [PipelineUpdated(pipeline="count", version=2, spec=spec(), salt="salt", updated=T0)]
    )  # as if the kill raced with the job's creation
    assert [j.id for j in domain.outdated_jobs(world.pps)] == [old]
    assert list(domain.needs_new_output(world.pps, world.view)) == []  # its output commit is still open
    world.pps_apply([JobFinished(pipeline="count", job=old, state=KILLED, finished=T0)])
    world.fs_apply(
        fs_domain.decide_finish_output_commit(
            world.fs, fs_domain_finish("count", old, error="killed"), None, T0
        )
    )
    assert [p.name for p in domain.needs_new_output(world.pps, world.view)] == ["count"]


def test_a_deleted_pipelines_repo_is_deleted_but_not_a_repo_made_later_under_its_name(world: World) -> None:
    world.pipeline(spec())
    world.create_jobs()
    later = T0 + timedelta(hours=1)
    world.pps_apply(domain.decide_delete_pipeline(world.pps, "count", later))
    assert list(domain.repos_to_delete(world.pps, world.view)) == ["count"]
    world.fs_apply({"count": [RepoDeleted(repo="count")]})
    world.fs_apply({"count": [RepoCreated(repo="count", created=later + timedelta(seconds=1))]})
    assert list(domain.repos_to_delete(world.pps, world.view)) == []


JOB_EVENTS = st.sampled_from(["start", "report", "finish", "fail", "store"])


@given(st.lists(st.tuples(st.integers(0, 3), JOB_EVENTS), max_size=40))
def test_the_active_jobs_are_exactly_those_with_something_left_to_do(steps: list[tuple[int, str]]) -> None:
    world = World()
    world.repo("data")
    world.put("data", "master")
    world.pipeline(spec())
    ids = [world.create_jobs()[0].job]
    for _ in range(3):
        world.put("data", "master")
        ids.append(world.create_jobs()[0].job)
    for n, (which, step) in enumerate(steps):
        job_id = ids[which]
        job = world.pps.jobs["count"][job_id]
        events: list[Event] = {
            "start": [
                JobStarted(pipeline="count", job=job_id, started=T0, plan="p", total=2, skipped=0, to_run=2)
            ],
            "report": [DatumFinished(pipeline="count", job=job_id, datum=f"d{n % 3}", state="success")],
            "finish": [JobFinished(pipeline="count", job=job_id, state="success", finished=T0, index="i")],
            "fail": [JobFinished(pipeline="count", job=job_id, state="killed", finished=T0)],
            "store": domain.decide_results_stored(
                job, JobResultsStored(pipeline="count", job=job_id, results=f"results/{n}")
            ),
        }[step]
        world.pps_apply(events)
    jobs = world.pps.jobs["count"]
    left = [i for i in ids if not jobs[i].final or (jobs[i].results and not jobs[i].stored)]
    assert list(world.pps.active["count"]) == left
