"""Projections: a service's in-memory state, rebuilt from the log and kept current.

A `Projection` says how one stream's events fold into state: `initial()` and `evolve(state, event)`.
A `Projector` runs it: it loads the newest snapshot (if any), replays the stream's tail through an
ordered consumer, reports ready once it has caught up with the stream as it was at start, and then
follows new events live.

Alongside the state it keeps what every service needs for safe writes:
- each aggregate's `Version` (for optimistic concurrency on the next append);
- the ids of the most recent commands it has seen applied (so a retried command is answered from
  what already happened instead of being decided twice).

Events of types this projection does not know (written by a newer version, or by another service)
are skipped, never fatal. `evolve` must be deterministic and do no I/O. For speed it may update
the state's containers in place and return the same object: the projector owns the state, and
copying large indexes on every event would make replay quadratic.
"""

from __future__ import annotations

import asyncio
import functools
import math
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from nats.js import api

from hw_events import observability, snapshots
from hw_events.errors import ServiceUnavailable
from hw_events.health import ReplayProgress
from hw_events.messages import EVENT_HEADER, Event, EventTypeHeader, Version, tag_of, utcnow
from hw_events.snapshots import SnapshotStore
from hw_events.store import EventStore
from hw_events.streams import StreamSpec

S = TypeVar("S")

_type_header = msgspec.json.Decoder(EventTypeHeader)


@dataclass(frozen=True)
class Projection(Generic[S]):
    """How one stream's events fold into a service's state.

    `schema` names the shape of the state; change it when an old snapshot can no longer be read
    as the new state, and the next start replays from the beginning.

    `header_folds` (type tag -> fold) lets replay skip decoding the commonest or largest events:
    a message whose `Hw-Event` header names such a type goes to `fold(state, about, body)`, `about`
    being the header's values after the tag (see `messages.header_of`) and `body` the stored
    envelope's JSON. The fold must leave the state as `evolve` would with the decoded event (a body
    that would not decode is the fold's to deal with). Only messages older than the commands a
    projector remembers go there: the newest, whose commands it must know, are decoded, and so
    are messages without the header (written before it existed).
    """

    name: str
    schema: str
    state_type: type[S]
    initial: Callable[[], S]
    evolve: Callable[[S, Any], S]
    event_types: tuple[type[Event], ...] = ()
    header_folds: Mapping[str, Callable[[S, str, bytes], S]] = field(default_factory=dict)


def _fold_nothing(state: S, event: Any) -> S:
    raise TypeError(f"this projection applies no events, yet got {type(event).__name__}")


def reading_only(name: str, schema: str, state_type: type[S]) -> Projection[S]:
    """A projection that knows no event types yet: it reads its stream (positions, health) and folds
    nothing. Services whose features are still to come start with one."""
    return Projection(
        name=name, schema=schema, state_type=state_type, initial=state_type, evolve=_fold_nothing
    )


def parse_ack_reply(reply: str) -> tuple[int, int]:
    """(stream sequence, pending count) from a JetStream delivery's reply subject.

    Both the v1 form `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>` and the
    v2 form with domain and account hash and a trailing token (ADR-15) are understood.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    return int(tokens[7]), int(tokens[10])


class _Replayed(msgspec.Struct, Generic[S]):
    """The part of an envelope a projection needs: decoding only this keeps replay fast."""

    event: S
    command: str = ""


class Projector(Generic[S]):
    """Keeps `state` equal to the fold of a stream's events, from snapshot plus tail, then live."""

    def __init__(
        self,
        nc: Any,
        stream: StreamSpec,
        projection: Projection[S],
        *,
        subjects: Sequence[str] | None = None,
        snapshots: SnapshotStore | None = None,
        snapshot_every: int = 10_000,
        snapshot_interval: float = 5.0,
        remember_commands: int = 10_000,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.stream = stream
        self.projection = projection
        self.subjects = tuple(subjects or stream.subjects)
        self._snapshots = snapshots
        self._snapshot_every = snapshot_every
        # A snapshot encodes the whole state: with a big state, saving every N events would cost
        # more than the replay it saves. So also at most one per `snapshot_interval` seconds.
        self._snapshot_interval = snapshot_interval
        self._last_snapshot_time = -math.inf
        self.remember_commands = remember_commands
        self._remember_max = 2 * remember_commands
        self._remember_from = 0  # replay skips commands older than the last `remember` before the end
        self._log = observability.log(projection=projection.name, stream=stream.name)

        self.state: S = projection.initial()
        self.applied = 0  # stream sequence of the last message read
        self.pending = 0
        # aggregate subject -> (stream sequence, event count); tuples, not Versions: set per event
        self.positions: dict[str, tuple[int, int]] = {}
        self.skipped = 0  # messages of unknown types, or that could not be decoded
        self.read = 0  # messages read since start (a restart from a snapshot reads only the tail)
        self._commands: dict[str, int] = {}
        self._read_at_snapshot = 0  # `read` when the last snapshot was saved
        self._next_snapshot_at = snapshot_every if snapshots is not None else math.inf
        self._target = 0
        self._ready = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._min_waiter = math.inf
        self._watchers: list[tuple[Callable[[S], bool], asyncio.Future[None]]] = []
        self._sub: Any = None
        self._unknown_types: set[str] = set()
        if projection.event_types:
            union: Any = functools.reduce(operator.or_, projection.event_types)
            self._decode: Callable[[bytes], _Replayed[Any]] | None = msgspec.json.Decoder(
                _Replayed[union]
            ).decode
        else:
            self._decode = None
        self._evolve = projection.evolve
        self._event_tags = sorted(tag_of(t) for t in projection.event_types)
        unknown = set(projection.header_folds) - set(self._event_tags)
        if unknown:  # a snapshot records the types it was built from: folds must be among them
            raise TypeError(f"{projection.name} folds {sorted(unknown)} by header, not among its event types")
        self._header_folds = projection.header_folds
        self._caught_up = False  # mirrors _ready, cheaper to test once per message
        self._tail_tokens = 0  # how many trailing tokens of a reply to split (0: not known yet)
        self._state_decoder = msgspec.msgpack.Decoder(projection.state_type)
        self._state_encoder = msgspec.msgpack.Encoder()

    @property
    def snapshot_store(self) -> SnapshotStore | None:
        return self._snapshots

    @property
    def snapshot_key(self) -> str:
        return f"{self.stream.name}.{self.projection.name}"

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the snapshot, start replaying; returns at once (see `wait_ready`)."""
        await self.prepare()
        await self.follow()

    async def prepare(self) -> None:
        """Load the snapshot and note where the stream ends now: what `ready` means, and `backlog`."""
        info = await self._js.stream_info(self.stream.name)
        if self._snapshots is not None:
            await self._restore(info.state.last_seq)
        self._target = await EventStore(self._nc).last_sequence(self.stream.name, self.subjects)
        self._remember_from = self._target - self.remember_commands
        self.pending = self.backlog  # (health shows it while a replay helper has it)

    @property
    def backlog(self) -> int:
        """Messages of the stream (as it was at `prepare`) past what the state holds: up to replay."""
        return max(0, self._target - self.applied)

    async def follow(self) -> None:
        """Replay from the state's position on, then follow live; returns at once (see `wait_ready`)."""
        start = self.applied + 1
        self.pending = self.backlog
        if self._target < start:
            self._set_ready()
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subjects=list(self.subjects) if len(self.subjects) > 1 else None,
        )
        self._sub = await self._js.subscribe(
            self.subjects[0],
            stream=self.stream.name,
            cb=self._on_message,
            ordered_consumer=True,
            config=config,
        )

    def _set_ready(self) -> None:
        self._caught_up = True
        self._ready.set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Return once the projector has caught up with the stream as it was at start."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise ServiceUnavailable(
                f"{self.projection.name} did not catch up with {self.stream.name} within {timeout:g}s "
                f"(at {self.applied} of {self._target})"
            ) from None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def stop(self, *, snapshot: bool = True) -> None:
        """Stop following the stream; save a snapshot if anything was read since the last one."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if snapshot and self.read > self._read_at_snapshot:
            await self.save_snapshot()
        self.release_waiters()

    def release_waiters(self) -> None:
        """Fail whatever waits on this projector (the service is stopping): callers retry elsewhere."""
        stopped = f"the {self.projection.name} projection stopped (the service is shutting down)"
        for future in [f for _, f in self._waiters] + [f for _, f in self._watchers]:
            if not future.done():
                future.set_exception(ServiceUnavailable(stopped))
        self._waiters.clear()

    # --- reading the stream ------------------------------------------------------------------------

    async def _on_message(self, msg: Any) -> None:  # noqa: PLR0912, PLR0915 - the replay hot path, in one piece
        """Fold one stored message into the state: the hot path of replay, kept in one function."""
        if self._tail_tokens:  # parse_ack_reply, inlined: only the tail of the reply is split
            tail = msg.reply.rsplit(".", self._tail_tokens)
            seq, pending = int(tail[1]), int(tail[4])
        else:
            seq, pending = parse_ack_reply(msg.reply)
            # v1 (9 tokens), or v2 with 11 or 12 (a trailing token is optional): 4 or 5 tail tokens
            dots = msg.reply.count(".")
            self._tail_tokens = 4 if dots == 8 else dots - 6
        self.applied = seq
        self.pending = pending
        self.read += 1
        # Every message counts towards its aggregate's position, even one this projection cannot
        # apply: the next conditional append must expect the aggregate as the log has it.
        subject = msg.subject
        position = self.positions.get(subject)
        self.positions[subject] = (seq, position[1] + 1 if position else 1)
        decode = self._decode
        fold = None
        if self._header_folds and seq <= self._remember_from and msg.headers:
            described = msg.headers.get(EVENT_HEADER)
            if described:
                tag, _, about = described.partition(" ")
                fold = self._header_folds.get(tag)
        if fold is not None:
            command = ""  # older than the commands remembered
            try:
                self.state = fold(self.state, about, msg.data)
            except Exception:
                self.skipped += 1
                self._log.exception("fold_failed", seq=seq, subject=subject)
        elif decode is None:  # knows no event types yet: nothing to fold
            command = self._skip(msg.data, seq, quiet=True)
        else:
            try:
                envelope = decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError):
                command = self._skip(msg.data, seq)
            else:
                command = envelope.command
                try:
                    self.state = self._evolve(self.state, envelope.event)
                except Exception:
                    # A bug in evolve must not stop the service; say which event it could not apply.
                    self.skipped += 1
                    self._log.exception("evolve_failed", seq=seq, subject=subject)
        if command and seq > self._remember_from:
            self._commands[command] = seq
            if len(self._commands) > self._remember_max:
                self._forget_old_commands()
        if not self._caught_up and (seq >= self._target or pending == 0):
            self._set_ready()
            self._log.info("replay_caught_up", seq=seq, skipped=self.skipped)
        if seq >= self._min_waiter:
            self._wake(seq)
        if self._watchers:
            self._check_watchers()
        if self.read >= self._next_snapshot_at:
            if time.monotonic() - self._last_snapshot_time >= self._snapshot_interval:
                await self.save_snapshot()
            else:
                self._next_snapshot_at = self.read + self._snapshot_every

    def _skip(self, data: bytes, seq: int, *, quiet: bool = False) -> str:
        """Count a message this projection cannot apply; return the command that caused it, if any."""
        self.skipped += 1
        try:
            header = _type_header.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            self._log.warning("undecodable_event_skipped", seq=seq)
            return ""
        event_type = header.event.type
        if quiet:
            return header.command
        if event_type in self._event_tags:
            self._log.warning("malformed_event_skipped", seq=seq, event_type=event_type)
        elif event_type not in self._unknown_types:
            self._unknown_types.add(event_type)  # log each unknown type once, not once per event
            self._log.info("unknown_event_type_skipped", seq=seq, event_type=event_type)
        return header.command

    def _forget_old_commands(self) -> None:
        # Trim to the newest `remember_commands` only when twice that many piled up: amortised O(1).
        self._commands = dict(list(self._commands.items())[-self.remember_commands :])

    # --- what writers need -------------------------------------------------------------------------

    def version(self, subject: str) -> Version:
        """The aggregate's version as this projector has seen it (new if it has no events)."""
        position = self.positions.get(subject)
        return Version(*position) if position else Version.new()

    def seen(self, command_id: str) -> int | None:
        """The stream sequence of the last event caused by `command_id`, if it was applied here."""
        return self._commands.get(command_id)

    async def wait_for(self, seq: int, timeout: float = 5.0) -> None:
        """Return once the event at stream sequence `seq` (or a later one) has been applied."""
        if self.applied >= seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        self._min_waiter = min(self._min_waiter, seq)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ServiceUnavailable(
                f"{self.projection.name} has not seen sequence {seq} of {self.stream.name} after {timeout:g}s"
            ) from None

    async def wait_until(self, condition: Callable[[S], bool], timeout: float | None, what: str) -> None:
        """Return once `condition(state)` holds (checked after each event); `what` names it in errors."""
        if condition(self.state):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        watcher = (condition, future)
        self._watchers.append(watcher)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ServiceUnavailable(f"gave up waiting for {what} after {timeout:g}s") from None
        finally:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def _check_watchers(self) -> None:
        for condition, future in list(self._watchers):
            if not future.done():
                try:
                    met = condition(self.state)
                except Exception as err:  # a watcher's bug must not stop replay
                    future.set_exception(err)
                    continue
                if met:
                    future.set_result(None)

    def _wake(self, seq: int) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for wanted, future in self._waiters:
            if wanted <= seq:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((wanted, future))
        self._waiters = still
        self._min_waiter = min((w for w, _ in still), default=math.inf)

    def progress(self) -> ReplayProgress:
        return ReplayProgress(
            stream=self.stream.name,
            applied=self.applied,
            pending=self.pending,
            ready=self.ready,
            read=self.read,
        )

    # --- snapshots ---------------------------------------------------------------------------------

    async def save_snapshot(self) -> None:
        """Save state and positions now. Failure is logged, not raised: a snapshot is only a cache."""
        if self._snapshots is None:
            return
        data = self.snapshot_bytes()
        self._last_snapshot_time = time.monotonic()
        self._read_at_snapshot = self.read
        self._next_snapshot_at = self.read + self._snapshot_every
        try:
            await self._snapshots.save(self.snapshot_key, data)
        except Exception as err:
            self._log.warning("snapshot_save_failed", error=str(err), seq=self.applied)
        else:
            self._log.debug("snapshot_saved", seq=self.applied, bytes=len(data))

    def snapshot_bytes(self) -> bytes:
        """State, positions and remembered commands as a snapshot, encoded (not saved)."""
        snapshot = snapshots.Snapshot(
            projection=self.projection.name,
            schema=self.projection.schema,
            events=self._event_tags,
            stream=self.stream.name,
            seq=self.applied,
            taken=utcnow(),
            positions={subject: Version(*position) for subject, position in self.positions.items()},
            commands=list(self._commands)[-self.remember_commands :],
            state=msgspec.Raw(self._state_encoder.encode(self.state)),
        )
        return snapshots.encode(snapshot)

    async def _restore(self, stream_last_seq: int) -> None:
        assert self._snapshots is not None
        try:
            data = await self._snapshots.load(self.snapshot_key)
        except Exception as err:
            self._log.warning("snapshot_unreadable", error=str(err))
            return
        if data is not None:
            self._install(data, stream_last_seq, source="snapshot")

    async def adopt(self, data: bytes) -> bool:
        """Take state, positions and commands from `snapshot_bytes` made elsewhere (a replay helper)
        before `follow`; False (logged) when they do not fit this projection or this stream."""
        if self._sub is not None:
            raise RuntimeError(f"{self.projection.name} already follows its stream: adopt before follow")
        info = await self._js.stream_info(self.stream.name)
        if not self._install(data, info.state.last_seq, source="helper"):
            return False
        # What the helper read is in no saved snapshot yet: save with the next event, or on stop.
        self._read_at_snapshot = self.read - 1
        if self._snapshots is not None:
            self._next_snapshot_at = self.read + 1
        return True

    def _install(self, data: bytes, stream_last_seq: int, *, source: str) -> bool:
        reason = None
        try:
            snapshot = snapshots.decode(data)
            if snapshot.schema != self.projection.schema:
                reason = f"schema {snapshot.schema!r} is not {self.projection.schema!r}"
            elif snapshot.events != self._event_tags:
                # Built by a version that skipped types this one applies (or the reverse).
                reason = (
                    f"it was built from event types {snapshot.events}, this version knows {self._event_tags}"
                )
            elif snapshot.seq > stream_last_seq:
                reason = f"it is at sequence {snapshot.seq} but the stream ends at {stream_last_seq}"
            else:
                state = self._state_decoder.decode(snapshot.state)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            reason = f"it cannot be decoded: {err}"
        if reason is not None:
            self._log.warning("snapshot_ignored", reason=reason, source=source)
            return False
        self.state = state
        self.applied = snapshot.seq
        self.positions = {subject: (v.seq, v.count) for subject, v in snapshot.positions.items()}
        self._commands = dict.fromkeys(snapshot.commands, snapshot.seq)
        self._log.info("snapshot_loaded", seq=snapshot.seq, taken=snapshot.taken.isoformat(), source=source)
        return True
