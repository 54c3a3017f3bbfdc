"""The work queue against a real nats-server: done once, retried, dead-lettered, never lost."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import nats.errors
import pytest

from hw_events import streams
from hw_events.errors import TransientError, UserError
from hw_events.workqueue import HeldTasks, QueueSpec, Task, WorkQueue, dead_letters, hand_back
from hwctl import processes
from tests.infra import NatsServer


@pytest.fixture
async def queue(nc: Any, unique: str) -> WorkQueue:
    await streams.ensure_streams(nc.jetstream(), (streams.TASKS, streams.DLQ))
    spec = QueueSpec(
        subject=f"hw.task.t{unique}.>",
        durable=f"test-{unique}",
        ack_wait=2.0,
        max_attempts=3,
        backoff=(0.05, 0.1),
    )
    wq = WorkQueue(nc, spec)
    await wq.ensure()
    return wq


async def queue_ahead_of(nc: Any, queue: WorkQueue, unique: str) -> WorkQueue:
    """A queue of the same settings whose tasks `queue.run(ahead=)` takes first (`hw.task.f<unique>.>`)."""
    first = WorkQueue(
        nc, dataclasses.replace(queue.spec, subject=f"hw.task.f{unique}.>", durable=f"first-{unique}")
    )
    await first.ensure()
    return first


def task_subject(queue: WorkQueue, key: str = "x") -> str:
    return queue.spec.subject.replace(">", key)


async def run_until(
    queue: WorkQueue, handler: Callable[[Task], Awaitable[None]], done: asyncio.Event, **options: Any
) -> None:
    """Run the queue (with `options` for `WorkQueue.run`) until `done` is set."""
    stop = asyncio.Event()
    runner = asyncio.create_task(queue.run(handler, stop=stop, poll=0.1, **options))
    try:
        await asyncio.wait_for(done.wait(), 15)
    finally:
        stop.set()
        await runner


async def remaining(nc: Any, queue: WorkQueue) -> int:
    info = await nc.jetstream().consumer_info(queue.spec.stream.name, queue.spec.durable)
    return int(info.num_pending + info.num_ack_pending)


async def test_a_done_task_is_acked_and_gone(nc: Any, queue: WorkQueue) -> None:
    await queue.submit(task_subject(queue), b"work")
    seen: list[bytes] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        seen.append(task.data)
        done.set()

    await run_until(queue, handle, done)
    assert seen == [b"work"]
    assert await remaining(nc, queue) == 0


async def test_a_transient_failure_is_retried(nc: Any, queue: WorkQueue) -> None:
    await queue.submit(task_subject(queue), b"flaky")
    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        attempts.append(task.attempt)
        if task.attempt == 1:
            raise TransientError("disk busy")
        done.set()

    await run_until(queue, handle, done)
    assert attempts == [1, 2]
    assert await remaining(nc, queue) == 0


async def test_a_task_that_keeps_failing_ends_in_the_dead_letters(nc: Any, queue: WorkQueue) -> None:
    await queue.submit(task_subject(queue, "doomed"), b"payload")
    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        attempts.append(task.attempt)
        if task.attempt == 3:
            done.set()
        raise RuntimeError("model diverged")

    await run_until(queue, handle, done)
    await asyncio.sleep(0.2)
    assert attempts == [1, 2, 3]
    [letter] = await dead_letters(nc, queue.spec.subject)
    assert letter.subject == task_subject(queue, "doomed")
    assert letter.data == b"payload"
    assert letter.reason == "failed 3 times; last error: RuntimeError: model diverged"
    assert letter.deliveries == 3
    assert await remaining(nc, queue) == 0


async def test_a_task_given_up_and_handed_on_is_acked_not_dead_lettered(nc: Any, queue: WorkQueue) -> None:
    await queue.submit(task_subject(queue, "whole"), b"two parts")
    done = asyncio.Event()
    handed: list[str] = []

    async def handle(task: Task) -> None:
        if task.subject.endswith("part"):
            done.set()
            return
        raise RuntimeError("too big at once")

    async def hand_on(task: Task, reason: str) -> bool:
        handed.append(reason)
        await queue.submit(task_subject(queue, "part"), b"one part")
        return True

    await run_until(queue, handle, done, on_dead=hand_on)
    assert handed == ["failed 3 times; last error: RuntimeError: too big at once"]
    assert await dead_letters(nc, queue.spec.subject) == []
    assert await remaining(nc, queue) == 0


async def test_tasks_of_the_queue_ahead_are_taken_first(nc: Any, queue: WorkQueue, unique: str) -> None:
    first = await queue_ahead_of(nc, queue, unique)
    for name in ("a1", "a2", "a3"):
        await queue.submit(task_subject(queue, name), name.encode())
    await first.submit(f"hw.task.f{unique}.b1", b"b1")
    seen: list[bytes] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        seen.append(task.data)
        if task.data == b"a1":  # queued while a1 runs: taken before a2 and a3
            await first.submit(f"hw.task.f{unique}.b2", b"b2")
        if len(seen) == 5:
            done.set()

    await run_until(queue, handle, done, busy=1, ahead=first)
    assert seen == [b"b1", b"a1", b"b2", b"a2", b"a3"]
    assert await remaining(nc, queue) == await remaining(nc, first) == 0


async def test_a_task_of_the_queue_ahead_due_again_is_taken_again(
    nc: Any, queue: WorkQueue, unique: str
) -> None:
    first = await queue_ahead_of(nc, queue, unique)
    await first.submit(f"hw.task.f{unique}.b1", b"b1")
    taken = await first.take_now()
    assert taken is not None
    assert taken.data == b"b1"
    assert await first.take_now() is None  # (answered at once: none ready)
    await taken.nak()  # (as a worker whose handler failed; one that died leaves it to ack_wait)
    seen: list[tuple[bytes, int]] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        seen.append((task.data, task.attempt))
        done.set()

    await run_until(queue, handle, done, busy=1, ahead=first)
    assert seen == [(b"b1", 2)]
    assert await remaining(nc, first) == 0


async def test_a_rejected_task_is_dead_lettered_at_once(nc: Any, queue: WorkQueue) -> None:
    await queue.submit(task_subject(queue), b"bad")
    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        attempts.append(task.attempt)
        done.set()
        raise UserError('glob "[" is not a valid pattern')

    await run_until(queue, handle, done)
    await asyncio.sleep(0.2)
    assert attempts == [1]
    [letter] = await dead_letters(nc, queue.spec.subject)
    assert letter.reason == 'rejected: glob "[" is not a valid pattern'


async def test_heartbeats_keep_a_long_task_with_its_live_worker(nc: Any, queue: WorkQueue) -> None:
    await queue.submit(task_subject(queue), b"long")
    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        attempts.append(task.attempt)
        await asyncio.sleep(5)  # more than twice ack_wait (2 s)
        done.set()

    await run_until(queue, handle, done)
    assert attempts == [1]


async def test_submitting_the_same_task_twice_queues_it_once(nc: Any, queue: WorkQueue) -> None:
    first = await queue.submit(task_subject(queue), b"once", msg_id=f"{queue.spec.durable}-job-1")
    again = await queue.submit(task_subject(queue), b"once", msg_id=f"{queue.spec.durable}-job-1")
    assert first == again
    assert await remaining(nc, queue) == 1


def start_stuck_worker(
    server: NatsServer, queue: WorkQueue, held: Path | None = None
) -> subprocess.Popen[str]:
    spec = queue.spec
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.stuck_worker",
            server.url,
            spec.subject,
            spec.durable,
            str(spec.ack_wait),
            str(spec.max_attempts),
            *([str(held)] if held else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("took attempt"), line
    return proc


async def test_a_task_of_a_killed_worker_is_redelivered(
    nc: Any, queue: WorkQueue, nats_server: NatsServer
) -> None:
    await queue.submit(task_subject(queue), b"survive")
    stuck = await asyncio.to_thread(start_stuck_worker, nats_server, queue)
    stuck.kill()
    stuck.wait()

    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        attempts.append(task.attempt)
        done.set()

    await run_until(queue, handle, done)
    assert attempts == [2]  # the same task, delivered again once the dead worker's ack_wait ran out
    assert await remaining(nc, queue) == 0


def listed(path: Path) -> list[str]:
    """The ack subjects a list of held tasks holds."""
    return [line.split()[0] for line in path.read_text().splitlines()]


async def attempts_of_next_delivery(queue: WorkQueue) -> list[int]:
    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        attempts.append(task.attempt)
        done.set()

    await run_until(queue, handle, done)  # (gives up after 15 s)
    return attempts


async def test_the_tasks_a_killed_worker_held_are_handed_back_at_once(
    nc: Any, queue: WorkQueue, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Not after `ack_wait` (a minute here): once handed back, the task comes again within seconds."""
    slow = WorkQueue(nc, dataclasses.replace(queue.spec, ack_wait=60.0))
    await slow.ensure()
    await slow.submit(task_subject(slow), b"survive")
    held = tmp_path / "held"
    stuck = await asyncio.to_thread(start_stuck_worker, nats_server, slow, held)
    stuck.kill()
    stuck.wait()
    assert await hand_back(nc, held, ack_wait=slow.spec.ack_wait) == 1
    assert not held.exists()
    assert await attempts_of_next_delivery(slow) == [2]
    assert await remaining(nc, slow) == 0


async def test_a_task_held_longer_than_its_ack_wait_is_still_handed_back_thanks_to_heartbeats(
    nc: Any, queue: WorkQueue, nats_server: NatsServer, tmp_path: Path
) -> None:
    """The list says when the server last heard of each task; heartbeats keep saying so."""
    patient = WorkQueue(nc, dataclasses.replace(queue.spec, ack_wait=3.0))  # (a heartbeat a second)
    await patient.ensure()
    await patient.submit(task_subject(patient), b"long")
    held = tmp_path / "held"
    stuck = await asyncio.to_thread(start_stuck_worker, nats_server, patient, held)
    await asyncio.sleep(7)
    # Killed just after a heartbeat: one half an ack wait old would rightly not be handed back.
    before = held.read_text()
    async with asyncio.timeout(5):  # (a file left empty would mean the task was dropped)
        while True:
            await asyncio.sleep(0.01)
            if held.read_text() not in (before, ""):
                break
    stuck.kill()
    stuck.wait()
    assert await hand_back(nc, held, ack_wait=patient.spec.ack_wait) == 1
    assert await attempts_of_next_delivery(patient) == [2]


async def test_a_task_not_heard_of_lately_is_not_handed_back(
    nc: Any, queue: WorkQueue, tmp_path: Path
) -> None:
    """Its worker's heartbeats stopped long enough ago that the task may be with another worker
    now, and a nak of the old delivery would take it from that one (nats-server redelivers on it)."""
    await queue.submit(task_subject(queue), b"mine")
    psub = await nc.jetstream().pull_subscribe_bind(queue.spec.durable, stream=queue.spec.stream.name)
    (msg,) = await psub.fetch(1, timeout=2)
    task = Task(msg, queue)
    held = HeldTasks(tmp_path / "held")
    long_ago = time.monotonic() - 10 * queue.spec.ack_wait
    with mock.patch("hw_events.workqueue.time.monotonic", return_value=long_ago):
        held.took(task)
    assert await hand_back(nc, held.path, ack_wait=queue.spec.ack_wait) == 0
    assert not held.path.exists()
    with pytest.raises(nats.errors.TimeoutError):  # not delivered again (before its ack_wait)
        await psub.fetch(1, timeout=0.5)
    # A heartbeat after such a silence drops it from the list for good.
    with mock.patch("hw_events.workqueue.time.monotonic", return_value=long_ago):
        held.took(task)
    held.beat(task, queue.spec.ack_wait)
    assert listed(held.path) == []
    await msg.ack_sync()


async def test_a_heartbeat_keeps_a_task_listed_unless_two_thirds_of_the_ack_wait_passed(
    nc: Any, queue: WorkQueue, tmp_path: Path
) -> None:
    """Beats go every third of it: a late one still counts, one after two thirds does not (the
    server may give the task to another worker once a whole ack wait passes)."""
    await queue.submit(task_subject(queue), b"mine")
    psub = await nc.jetstream().pull_subscribe_bind(queue.spec.durable, stream=queue.spec.stream.name)
    (msg,) = await psub.fetch(1, timeout=2)
    task = Task(msg, queue)
    held = HeldTasks(tmp_path / "held")
    wait = queue.spec.ack_wait
    start = time.monotonic()
    with mock.patch("hw_events.workqueue.time.monotonic", return_value=start):
        held.took(task)
    with mock.patch("hw_events.workqueue.time.monotonic", return_value=start + 0.6 * wait):
        held.beat(task, wait)  # late, but within two thirds: kept, and heard of now
    assert listed(held.path) == [msg.reply]
    with mock.patch("hw_events.workqueue.time.monotonic", return_value=start + (0.6 + 0.7) * wait):
        held.beat(task, wait)  # silent for 0.7 of it since: dropped
    assert listed(held.path) == []
    await msg.ack_sync()


async def test_a_worker_lists_only_the_tasks_it_holds_unsettled(
    nc: Any, queue: WorkQueue, tmp_path: Path
) -> None:
    """Each while it runs; a task nak'd is off the list before the nak goes, so the list never
    names a delivery the server may have handed to another worker."""
    held = HeldTasks(tmp_path / "held")
    for key in ("a", "b"):
        await queue.submit(task_subject(queue, key), key.encode())
    seen: list[tuple[str, list[str]]] = []
    after_nak: list[list[str]] = []
    done = asyncio.Event()

    async def handle(task: Task) -> None:
        seen.append((task.msg.reply, listed(held.path)))
        if task.data == b"a" and task.attempt == 1:
            nak = task.msg.nak

            async def nak_as_listed(*args: Any, **kwargs: Any) -> None:
                after_nak.append(listed(held.path))  # (as the nak goes)
                await nak(*args, **kwargs)

            task.msg.nak = nak_as_listed
            await task.nak(0.05)  # (taken again later)
            return
        if len(seen) == 3:
            done.set()

    await run_until(queue, handle, done, held=held)
    assert [held_then for _, held_then in seen] == [[reply] for reply, _ in seen]
    assert after_nak == [[]]
    assert listed(held.path) == []


async def test_a_task_whose_worker_dies_on_the_last_attempt_is_kept_not_lost(
    nc: Any, unique: str, nats_server: NatsServer
) -> None:
    await streams.ensure_streams(nc.jetstream(), (streams.TASKS, streams.DLQ))
    spec = QueueSpec(subject=f"hw.task.l{unique}.>", durable=f"last-{unique}", ack_wait=1.0, max_attempts=1)
    queue = WorkQueue(nc, spec)
    await queue.ensure()
    await queue.submit(f"hw.task.l{unique}.x", b"fragile")
    stuck = await asyncio.to_thread(start_stuck_worker, nats_server, queue)
    stuck.kill()
    stuck.wait()

    handled: list[int] = []
    stop = asyncio.Event()

    async def handle(task: Task) -> None:
        handled.append(task.attempt)

    runner = asyncio.create_task(queue.run(handle, stop=stop, poll=0.1))
    for _ in range(100):
        letters = await dead_letters(nc, spec.subject)
        if letters:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await runner
    assert handled == []  # not run a second time: it had used its one attempt
    assert letters[0].data == b"fragile"
    assert "the last worker to take it stopped before finishing" in letters[0].reason
    assert processes.pid_alive(stuck.pid) is False


async def test_a_busy_consumer_takes_no_task_it_cannot_start_and_overlaps_only_the_tail(
    nc: Any, queue: WorkQueue
) -> None:
    """Two workers on one queue, each able to hold two tasks but start one (`busy=1`): while the
    first is stuck in a long task, the second gets the other task instead of it waiting."""
    for key in ("long", "short"):
        await queue.submit(task_subject(queue, key), key.encode())
    release = asyncio.Event()
    taken: dict[bytes, str] = {}
    both = asyncio.Event()

    def handler(name: str) -> Callable[[Task], Awaitable[None]]:
        async def handle(task: Task) -> None:
            taken[task.data] = name
            if len(taken) == 2:
                both.set()
            if task.data == b"long":
                await release.wait()
            task.free_slot()

        return handle

    stop = asyncio.Event()
    first = asyncio.create_task(queue.run(handler("a"), stop=stop, poll=0.1, concurrency=2, busy=1))
    await asyncio.sleep(0.3)  # a alone: it starts one task and, busy with it, takes no other
    assert taken == {b"long": "a"}  # (tasks come in the order they were submitted)
    second = asyncio.create_task(queue.run(handler("b"), stop=stop, poll=0.1, concurrency=2, busy=1))
    try:
        await asyncio.wait_for(both.wait(), 5)  # a is stuck in the long one: b gets the short one
        assert taken[b"short"] == "b"
    finally:
        release.set()
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(first, second)
    assert set(taken) == {b"long", b"short"}
    assert await remaining(nc, queue) == 0


@pytest.mark.parametrize("finishing", [False, True], ids=["taking", "finishing"])
async def test_a_queue_told_to_give_up_now_cancels_its_handlers_and_the_task_comes_back(
    nc: Any, queue: WorkQueue, tmp_path: Path, finishing: bool
) -> None:
    """Also when told to stop first, and so waiting for the tasks under way (a worker whose grace
    ran out): their handlers are cancelled (a datum's code is killed), not left running."""
    await queue.submit(task_subject(queue), b"endless")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(task: Task) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    held = HeldTasks(tmp_path / "held")
    stop = asyncio.Event()
    # (with room for another task, the queue goes on taking until it is told to stop)
    runner = asyncio.create_task(queue.run(endless, stop=stop, poll=0.1, held=held, concurrency=2))
    await asyncio.wait_for(started.wait(), 5)
    if finishing:
        stop.set()
        await asyncio.sleep(0.5)  # (now waiting for the handler to finish)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert cancelled.is_set()
    assert await remaining(nc, queue) == 1  # not acked: another worker gets it
    assert len(listed(held.path)) == 1  # (and, listed still, it is handed back once this process is gone)
