"""Work that must be done once: a durable pull consumer on the `HW_TASKS` work-queue stream.

A task is acked only when its work is done, so a worker that dies leaves it to be redelivered to
another. While a handler runs, heartbeats (`in_progress`) keep a long task from being redelivered
behind its live worker's back. What the handler raises decides what happens next:

- returns: ack (the stream deletes the task);
- `UserError`: the task itself is wrong and retrying cannot help: dead-letter it now;
- anything else (`TransientError`, a crash): nak with a growing delay, and after `max_attempts`
  dead-letter it with the last error as the reason.

Attempts are bounded by this code, not by the server: a task whose worker died on its last
attempt is delivered once more and dead-lettered instead of lost, and if even that fails (the
dead-letter stream or whoever `on_dead` tells is unreachable) it is delivered again later. Dead letters
keep the original subject, payload and headers in `HW_DLQ`, with the reason in `Hw-Dead-*` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.js import api
from nats.js.errors import BadRequestError

from hw_events import observability, streams, subjects
from hw_events.errors import UserError
from hw_events.store import read_messages
from hw_events.streams import StreamSpec

DEAD_REASON = "Hw-Dead-Reason"
DEAD_STREAM = "Hw-Dead-Stream"
DEAD_SEQUENCE = "Hw-Dead-Sequence"
DEAD_DELIVERIES = "Hw-Dead-Deliveries"
DEAD_CONSUMER = "Hw-Dead-Consumer"
DEAD_SUBJECT = "Hw-Dead-Subject"

_CONSUMER_EXISTS = 10148
AHEAD_WAIT = 2.0  # seconds for the server to answer a `take_now` (it answers at once, task or not)
_TAKE_NOW = b'{"batch":1,"no_wait":true}'


@dataclass(frozen=True)
class QueueSpec:
    """One kind of work: which tasks, which durable consumer, how often to try."""

    subject: str  # filter, e.g. "hw.task.datum.>"
    durable: str
    max_attempts: int = 3
    ack_wait: float = 30.0  # seconds without a heartbeat before a task is redelivered
    backoff: tuple[float, ...] = (1.0, 5.0, 30.0)  # nak delay after attempt 1, 2, 3...
    max_ack_pending: int = 1000
    stream: StreamSpec = streams.TASKS
    dead_letters: StreamSpec = streams.DLQ

    def delay_after(self, attempt: int) -> float:
        return self.backoff[min(attempt, len(self.backoff)) - 1] if self.backoff else 0.0


@dataclass
class Task:
    """One delivery of a task; settle it at most once (the queue settles it if the handler does not)."""

    msg: Any
    queue: WorkQueue
    settled: bool = field(default=False)
    slot: asyncio.Semaphore | None = None  # see `WorkQueue.run(busy=...)`

    def free_slot(self) -> None:
        """This task no longer holds up the next one (its main work is done; what is left, such as
        reporting, may overlap the next task's work). Once; the queue does it at the end anyway."""
        if self.slot is not None:
            slot, self.slot = self.slot, None
            slot.release()

    @property
    def data(self) -> bytes:
        return bytes(self.msg.data)

    @property
    def subject(self) -> str:
        return str(self.msg.subject)

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.msg.headers or {})

    @property
    def attempt(self) -> int:
        """1 on the first delivery."""
        return int(self.msg.metadata.num_delivered)

    @property
    def seq(self) -> int:
        return int(self.msg.metadata.sequence.stream)

    def decode(self, type_: type[Any]) -> Any:
        return msgspec.json.decode(self.msg.data, type=type_)

    async def ack(self) -> None:
        """Confirmed by the server (a double ack): an ack lost on the way would mean doing it twice."""
        if not self.settled:
            self.queue._let_go(self)
            await self.msg.ack_sync(timeout=5.0)
            self.settled = True

    async def nak(self, delay: float = 0.0) -> None:
        if not self.settled:
            self.settled = True
            self.queue._let_go(self)
            await self.msg.nak(delay=delay or None)

    async def in_progress(self) -> None:
        if not self.settled:
            await self.msg.in_progress()

    async def dead_letter(self, reason: str) -> None:
        """Keep the task in the dead-letter stream with `reason`, then remove it from the queue."""
        if self.settled:
            return
        await self.queue.keep_dead_letter(self, reason)
        self.settled = True
        self.queue._let_go(self)
        await self.msg.term()


class HeldTasks:
    """The tasks a process holds and has not settled, kept in a file for whoever supervises it.

    A task whose worker dies is otherwise delivered again only once `ack_wait` passes without a
    heartbeat. A supervisor that sees the process die hands its tasks back at once (`hand_back`).
    The file lists each delivery's ack subject and when this process last told the server of it
    (took it, or sent a heartbeat while connected), one a line; it is replaced whole on each
    change. A nak of an older delivery would take the task from the worker it went to since, so
    only entries heard of lately are handed back, and one whose heartbeats stopped for two thirds
    of `ack_wait` is dropped for good. A task leaves the list before it is settled, and when its handler ends
    without settling it (it comes back after `ack_wait`); one whose handler was cancelled (the
    process stopping) stays, to be handed back once the process is gone.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # ack subject -> when the server last heard of it: `time.monotonic()`, one clock for every
        # process of a machine (Linux) that no change of the wall clock moves
        self._heard: dict[str, float] = {}
        self._write()

    def took(self, task: Task) -> None:
        self._heard[task.msg.reply] = time.monotonic()
        self._write()

    def beat(self, task: Task, ack_wait: float) -> None:
        """A heartbeat for `task` went out while connected."""
        reply = task.msg.reply
        last = self._heard.get(reply)
        if last is None:
            return
        now = time.monotonic()
        # Beats go every third of `ack_wait`: two thirds leave a loaded machine a third of slack,
        # and the server a third before it could give the task to another worker.
        if now - last < ack_wait * 2 / 3:
            self._heard[reply] = now
        else:  # silent that long: the server may give it (or have given it) to another worker
            del self._heard[reply]
        self._write()

    def let_go(self, task: Task) -> None:
        if self._heard.pop(task.msg.reply, None) is not None:
            self._write()

    def _write(self) -> None:
        fresh = self.path.with_name(self.path.name + ".new")
        try:
            fresh.write_text("".join(f"{reply} {heard:.3f}\n" for reply, heard in self._heard.items()))
            os.replace(fresh, self.path)
        except OSError:  # (a full disk): none listed is safe, a stale list is not
            with contextlib.suppress(OSError):
                self.path.unlink()


async def hand_back(nc: Any, path: Path, *, ack_wait: float) -> int:
    """Nak the tasks a process that died held (see `HeldTasks`), so each is delivered again now,
    and forget the file; how many. Only entries heard of within half of `ack_wait` (heartbeats go
    every third of it), and only while connected (a nak held back until a reconnect could be one
    of an older delivery by then; so use a connection that does not reconnect): the rest come back
    after their `ack_wait`, as without this."""
    held = _take_held(path)
    if not nc.is_connected:
        return 0
    now = time.monotonic()
    handed = [reply for reply, heard in held if now - heard < ack_wait / 2]
    for reply in handed:
        await nc.publish(reply, b"-NAK")
    await nc.flush(timeout=2)
    return len(handed)


def _take_held(path: Path) -> list[tuple[str, float]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    path.unlink(missing_ok=True)
    held = []
    for line in lines:
        reply, _, heard = line.partition(" ")
        with contextlib.suppress(ValueError):
            if reply.startswith("$JS.ACK."):  # (nothing else to nak)
                held.append((reply, float(heard)))
    return held


class WorkQueue:
    """Submits tasks to, and runs handlers over, one durable pull consumer."""

    def __init__(self, nc: Any, spec: QueueSpec) -> None:
        self._on_dead: Callable[[Task, str], Awaitable[bool | None]] | None = None
        self._held: HeldTasks | None = None
        self._nc = nc
        self._js = nc.jetstream()
        self.spec = spec
        self._log = observability.log(queue=spec.durable)

    def _consumer_config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            durable_name=self.spec.durable,
            filter_subject=self.spec.subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.spec.ack_wait,
            max_deliver=-1,  # `_process` counts attempts; the server must never drop a task silently
            max_ack_pending=self.spec.max_ack_pending,
            deliver_policy=api.DeliverPolicy.ALL,
        )

    async def ensure(self) -> None:
        """Create the durable consumer, or update its settings."""
        try:
            await self._js.add_consumer(self.spec.stream.name, self._consumer_config())
        except BadRequestError as err:
            if err.err_code != _CONSUMER_EXISTS:
                raise
            await self._js.update_consumer(self.spec.stream.name, self._consumer_config())

    async def submit(self, subject: str, payload: bytes, *, msg_id: str | None = None) -> int:
        """Queue a task; with `msg_id`, submitting the same task twice queues it once."""
        headers = observability.inject()
        if msg_id:
            headers[api.Header.MSG_ID] = msg_id
        ack = await self._js.publish(subject, payload, headers=headers)
        return int(ack.seq)

    async def run(
        self,
        handler: Callable[[Task], Awaitable[None]],
        *,
        stop: asyncio.Event,
        concurrency: int = 1,
        poll: float = 1.0,
        on_dead: Callable[[Task, str], Awaitable[bool | None]] | None = None,
        busy: int = 0,
        ahead: WorkQueue | None = None,
        held: HeldTasks | None = None,
    ) -> None:
        """Take tasks and run `handler` on up to `concurrency` at once, until `stop` is set.

        Tasks already taken are finished before this returns. `on_dead` hears of every task given
        up (with the reason) before it is dead-lettered, so whoever waits for it can be told; if it
        says True, it handed the work on (queued it again, in other tasks) and the task is acked
        instead.
        With `busy`, at most that many tasks are taken and not yet past `Task.free_slot()`: a task
        is taken only when there is room to start on it, so none waits here behind a long one
        while another consumer of the queue is idle. With `ahead` (a queue of the same kind of
        task, with the same settings), its tasks are taken before this queue's whenever it has any.
        With `held`, the tasks taken and not yet settled are kept listed there, so a supervisor
        can hand them back if this process dies.
        """
        self._on_dead = on_dead
        self._held = held
        slots = asyncio.Semaphore(busy) if busy else None
        psub = await self._js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream.name)
        running: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                free = concurrency - len(running)
                if free <= 0:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if slots is not None:
                    if not await _acquire(slots, stop):
                        break
                    free = 1
                msgs = await _take(psub, free, poll, ahead=ahead)
                if slots is not None and not msgs:
                    slots.release()
                for msg in msgs:
                    job = asyncio.create_task(self._process(Task(msg, self, slot=slots), handler))
                    running.add(job)
                    job.add_done_callback(running.discard)
        except asyncio.CancelledError:  # told to give up now: so do the handlers (not acked)
            for job in running:
                job.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        finally:
            if running:
                try:
                    await asyncio.wait(running)
                except asyncio.CancelledError:  # told to give up while finishing: so do the handlers
                    for job in running:
                        job.cancel()
                    await asyncio.gather(*running, return_exceptions=True)
                    raise
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def take_now(self) -> Any | None:
        """One task ready to be taken (new, or due again: nak'd, or its worker died), or None at
        once if there is none. Counts from `consumer_info` miss the tasks due again, and nats-py's
        fetch of one waits for one to come; so this sends JetStream's pull request itself (the
        documented `CONSUMER.MSG.NEXT` API, as nats-py does inside its fetch) with `no_wait`,
        which the server answers at once: a task, or a 404 status. The answer comes to an inbox of
        this call's own: one that comes too late goes nowhere, and its task is delivered again
        after `ack_wait`, rather than run later from a stale copy."""
        subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self.spec.stream.name}.{self.spec.durable}"
        try:
            inbox = await self._nc.subscribe(self._nc.new_inbox())
        except nats.errors.Error:  # (NATS away a moment: the other queue's fetch meets it too)
            return None
        try:
            await self._nc.publish(subject, _TAKE_NOW, reply=inbox.subject)
            msg = await inbox.next_msg(timeout=AHEAD_WAIT)
        except nats.errors.Error:  # (no answer in time, or NATS away)
            return None
        finally:
            with contextlib.suppress(Exception):
                await inbox.unsubscribe()
        return None if _status(msg) else msg

    async def _process(self, task: Task, handler: Callable[[Task], Awaitable[None]]) -> None:
        held = self._held
        if held is None:
            await self._run_task(task, handler)
            return
        cancelled = False
        try:
            held.took(task)
            await self._run_task(task, handler)
        except asyncio.CancelledError:
            cancelled = True  # (the process stopping: it stays listed, to be handed back)
            raise
        finally:
            if not cancelled:
                held.let_go(task)

    def _let_go(self, task: Task) -> None:
        """`task` is about to be settled: off the list first (a nak could hand it to another worker
        before the list is written, and a nak of it later would take it from that one)."""
        if self._held is not None:
            self._held.let_go(task)

    async def _run_task(self, task: Task, handler: Callable[[Task], Awaitable[None]]) -> None:
        log = self._log.bind(subject=task.subject, seq=task.seq, attempt=task.attempt)
        beat = asyncio.create_task(self._heartbeat(task))
        if task.attempt > self.spec.max_attempts:
            lost = (
                f"gave up after {self.spec.max_attempts} attempts: "
                "the last worker to take it stopped before finishing"
            )
            task.free_slot()
            try:
                await self._settle(task, log, dead=lost)  # (`on_dead` may take a while)
            finally:
                beat.cancel()
            return
        parent = observability.extract(task.headers)
        try:
            with observability.tracer().start_as_current_span(f"task {self.spec.durable}", context=parent):
                await handler(task)
        except UserError as err:
            await self._settle(task, log, dead=f"rejected: {err.message}")
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            if task.attempt >= self.spec.max_attempts:
                await self._settle(task, log, dead=f"failed {task.attempt} times; last error: {reason}")
            else:
                log.warning("task_retry_later", error=reason, delay=self.spec.delay_after(task.attempt))
                await self._settle(task, log, nak_delay=self.spec.delay_after(task.attempt))
        else:
            await self._settle(task, log)
        finally:
            beat.cancel()
            task.free_slot()

    async def _settle(
        self, task: Task, log: Any, *, dead: str | None = None, nak_delay: float | None = None
    ) -> None:
        """Ack, nak or dead-letter. If even that fails (NATS gone), the task is redelivered later."""
        try:
            if dead is not None:
                if self._on_dead is not None:
                    try:
                        handed_on = await self._on_dead(task, dead)
                    except Exception as err:  # not told: keep the task, give it up again later
                        log.warning("task_give_up_postponed", error=f"{type(err).__name__}: {err}")
                        await task.nak(self.spec.delay_after(self.spec.max_attempts))
                        return
                    if handed_on:
                        await task.ack()
                        log.info("task_handed_on", reason=dead)
                        return
                await task.dead_letter(dead)
                log.warning("task_dead_lettered", reason=dead)
            elif nak_delay is not None:
                await task.nak(nak_delay)
            else:
                await task.ack()
        except Exception as err:
            log.error(
                "task_not_settled", error=f"{type(err).__name__}: {err}", redelivered_after=self.spec.ack_wait
            )

    async def _heartbeat(self, task: Task) -> None:
        interval = max(self.spec.ack_wait / 3, 0.1)
        while True:
            await asyncio.sleep(interval)
            try:
                await task.in_progress()
            except nats.errors.Error as err:
                self._log.warning("heartbeat_failed", error=str(err))
            else:
                if self._held is not None and self._nc.is_connected:
                    self._held.beat(task, self.spec.ack_wait)

    async def keep_dead_letter(self, task: Task, reason: str) -> None:
        meta = task.msg.metadata
        headers = {k: v for k, v in task.headers.items() if not k.startswith("Nats-")}
        headers.update(
            {
                DEAD_REASON: reason,
                DEAD_STREAM: meta.stream,
                DEAD_SEQUENCE: str(meta.sequence.stream),
                DEAD_DELIVERIES: str(meta.num_delivered),
                DEAD_CONSUMER: meta.consumer,
                DEAD_SUBJECT: task.subject,
                # The same task dead-lettered twice (a retried term) is kept once.
                api.Header.MSG_ID: f"dead:{meta.stream}:{meta.sequence.stream}",
            }
        )
        await self._js.publish(subjects.dead_letter_subject(task.subject), task.data, headers=headers)


def _status(msg: Any) -> str:
    """A JetStream status answer's code (404: no task; 408: request expired), "" for a task."""
    return str(msg.headers.get(api.Header.STATUS, "")) if msg.headers else ""


async def _take(psub: Any, count: int, poll: float, *, ahead: WorkQueue | None) -> list[Any]:
    """Up to `count` tasks: one from the queue ahead if it has one ready, else from `psub` (none
    after `poll`)."""
    if ahead is not None:
        msg = await ahead.take_now()
        if msg is not None:
            return [msg]
    try:
        msgs: list[Any] = await psub.fetch(count, timeout=poll)
    except nats.errors.TimeoutError:
        return []
    return msgs


async def _acquire(slots: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take a slot; False if told to stop first."""
    taking = asyncio.ensure_future(slots.acquire())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if taking.done():
        return True
    taking.cancel()
    return False


@dataclass(frozen=True)
class DeadLetter:
    subject: str  # where the task was submitted
    data: bytes
    reason: str
    deliveries: int
    headers: dict[str, str]


async def dead_letters(nc: Any, subject: str = ">", *, spec: StreamSpec = streams.DLQ) -> list[DeadLetter]:
    """What the dead-letter stream holds for tasks whose subject matches `subject`."""
    out = []
    for msg in await read_messages(nc.jetstream(), spec.name, subjects.dead_letter_subject(subject)):
        headers = dict(msg.headers or {})
        out.append(
            DeadLetter(
                subject=headers.get(DEAD_SUBJECT, msg.subject.removeprefix(subjects.DLQ_PREFIX)),
                data=bytes(msg.data),
                reason=headers.get(DEAD_REASON, ""),
                deliveries=int(headers.get(DEAD_DELIVERIES, "0")),
                headers=headers,
            )
        )
    return out
