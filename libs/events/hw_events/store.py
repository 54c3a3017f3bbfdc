"""The event store: append events to aggregates on JetStream, read them back.

An aggregate is one subject (`hw.fs.evt.<repo>`); its version is the stream sequence of its last
event. Appends are conditional: `Nats-Expected-Last-Subject-Sequence` makes a writer that decided on
stale state fail with `ConcurrencyConflict` instead of overwriting; `Nats-Msg-Id`, derived from the
causing command's id, makes a retried append land once.

One event is one message. Several events decided together go in one ADR-50 atomic batch: all land
or none. Bulk writers that touch many aggregates pipeline with `append_many`.

This is raw nats-py on purpose: it is the hot path (see docs/architecture.md for the numbers).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.js import api
from nats.js.errors import NotFoundError

from hw_events import observability
from hw_events.errors import ConcurrencyConflict, InternalError, ServiceUnavailable, UserError
from hw_events.messages import EVENT_HEADER, Envelope, Event, Version, header_of, new_id, utcnow

E = TypeVar("E")

WRONG_LAST_SEQUENCE = 10071
BATCH_DUPLICATE_MSG_ID = 10201
MAX_BATCH = 1000  # ADR-50's limit on messages per atomic batch
_ACTUAL_SEQ = re.compile(r"wrong last sequence: (\d+)")

_encoder = msgspec.json.Encoder()


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    count: int = 0
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class _CountOnly(msgspec.Struct):
    version: int = 0


_count_decoder = msgspec.json.Decoder(_CountOnly)


@dataclass(frozen=True)
class Append:
    """Events to add to one aggregate, and the version they were decided on (None: no check)."""

    subject: str
    events: Sequence[Event]
    expected: Version | None
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class Stored:
    """An event read back: its stream sequence, subject and envelope."""

    seq: int
    subject: str
    envelope: Envelope[Any]


def _not_sent(subject: str, err: nats.errors.Error) -> Exception:
    """What a publish that never left the client means for the caller."""
    if isinstance(err, nats.errors.MaxPayloadError):
        return UserError(f"an event for {subject} is larger than NATS accepts in one message ({err})")
    return ServiceUnavailable(f"could not send an event for {subject} to NATS: {type(err).__name__}: {err}")


def _after(append: Append, seq: int) -> Version:
    """The aggregate's version once `append` landed with its last event at `seq` (count 0: unknown,
    for an append made without an expected version)."""
    if append.expected is None:
        return Version(seq, 0)
    return Version(seq, append.expected.count + len(append.events))


def _headers(msg_id: str, event: Event, expected: Version | None) -> dict[str, str]:
    """Idempotency (`Nats-Msg-Id`), what the event is about (`Hw-Event`, for types that say:
    readers may route on it without decoding the body) and, when a version is expected,
    optimistic concurrency."""
    headers: dict[str, str] = {api.Header.MSG_ID: msg_id}
    described = header_of(event)
    if described:
        headers[EVENT_HEADER] = described
    if expected is not None:
        headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected.seq)
    return headers


def _conflict(subject: str, expected: Version | None, description: str) -> ConcurrencyConflict:
    match = _ACTUAL_SEQ.search(description)
    actual = int(match.group(1)) if match else None
    return ConcurrencyConflict(
        f"{subject} changed while this request was being decided (expected it at sequence "
        f"{expected.seq if expected else '?'}, it is at {actual if actual is not None else 'a later one'}); "
        "retrying re-reads it",
        subject=subject,
        expected=expected.seq if expected else None,
        actual=actual,
    )


class EventStore:
    """Appends to and reads from Headwater's event streams over one NATS connection."""

    def __init__(self, nc: Any, *, timeout: float = 5.0, max_in_flight: int = 4000) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._timeout = timeout
        # Pipelined appends: acks arrive on one inbox; at most `max_in_flight` wait at once.
        self._ack_prefix: str | None = None
        self._acks: dict[str, asyncio.Future[_PubAck]] = {}
        self._next_ack = 0
        self._in_flight = asyncio.Semaphore(max_in_flight)

    # --- writing -----------------------------------------------------------------------------------

    def _envelopes(self, append: Append, trace: dict[str, str]) -> list[tuple[str, bytes]]:
        """(msg id, payload) for each event.

        An id is `<command>:<aggregate>:<n>`, n the event's place in the aggregate (or in this call,
        when no version is expected): a retried decision repeats its ids and lands once, while one
        command may still write several aggregates, or one aggregate several times.
        """
        checked = append.expected is not None
        base = append.expected.count if append.expected is not None else 0
        now = utcnow()
        prefix = append.command_id or new_id()
        out = []
        for i, event in enumerate(append.events):
            event_id = f"{prefix}:{append.subject}:{base + i + 1}"
            envelope = Envelope(
                id=event_id,
                aggregate=append.subject,
                version=base + i + 1 if checked else 0,
                time=now,
                command=append.command_id,
                trace=trace,
                event=event,
            )
            out.append((event_id, _encoder.encode(envelope)))
        return out

    async def append(
        self,
        subject: str,
        events: Sequence[Event],
        *,
        expected: Version | None,
        command_id: str = "",
    ) -> Version:
        """Append `events` to the aggregate `subject`; return its new version.

        Raises `ConcurrencyConflict` if the aggregate is no longer at `expected`.
        """
        if not events:
            raise ValueError("append needs at least one event")
        append = Append(subject, events, expected, command_id)
        if len(events) > 1:
            return (await self.append_together([append]))[0]
        msg_id, payload = self._envelopes(append, observability.inject())[0]
        ack = await self._request(subject, payload, _headers(msg_id, events[0], expected))
        if ack.error is not None:
            raise self._append_error(subject, expected, ack.error)
        return _after(append, ack.seq)

    async def append_together(self, appends: Sequence[Append]) -> list[Version]:
        """Append to one or several aggregates atomically (ADR-50 batch): all land or none do.

        Each aggregate's expected version is checked on its first message in the batch. Returns
        each aggregate's new version, in the order given.
        """
        if not appends or any(not a.events for a in appends):
            raise ValueError("append_together needs at least one event for each aggregate")
        if len(appends) == 1 and len(appends[0].events) == 1:
            only = appends[0]
            return [
                await self.append(
                    only.subject, only.events, expected=only.expected, command_id=only.command_id
                )
            ]
        messages = self._batch(appends)
        ack = await self._publish_batch(messages)
        if ack.error is not None:
            # The server does not say which aggregate failed its check; name all that had one.
            checked_appends = [a for a in appends if a.expected is not None] or list(appends)
            subject = ", ".join(a.subject for a in checked_appends)
            raise self._append_error(subject, checked_appends[0].expected, ack.error)
        # A committed batch is stored contiguously, ending at ack.seq.
        seq = ack.seq - len(messages)
        versions = []
        for append in appends:
            seq += len(append.events)
            versions.append(_after(append, seq))
        return versions

    def _batch(self, appends: Sequence[Append]) -> list[tuple[str, bytes, dict[str, str]]]:
        """(subject, payload, headers) per event; each aggregate is checked on its first message."""
        trace = observability.inject()
        messages = []
        checked: set[str] = set()
        for append in appends:
            for (msg_id, payload), event in zip(self._envelopes(append, trace), append.events, strict=True):
                expected = append.expected if append.subject not in checked else None
                checked.add(append.subject)
                messages.append((append.subject, payload, _headers(msg_id, event, expected)))
        if len(messages) > MAX_BATCH:
            raise UserError(f"cannot append {len(messages)} events at once; the limit is {MAX_BATCH}")
        return messages

    async def _publish_batch(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> _PubAck:
        """Send an ADR-50 atomic batch; the commit's acknowledgement says whether it was stored."""
        batch_id = new_id()
        for n, (subject, payload, headers) in enumerate(messages, start=1):
            headers[api.Header.BATCH_ID] = batch_id
            headers[api.Header.BATCH_SEQUENCE] = str(n)
            if n == len(messages):
                headers[api.Header.BATCH_COMMIT] = "1"
                return await self._request(subject, payload, headers)
            if n == 1:
                # The server answers the first message: empty, unless it refuses the batch at once.
                first = await self._request(subject, payload, headers, allow_empty=True)
                if first.error is not None:
                    return first
            else:
                await self._nc.publish(subject, payload, headers=headers)
        raise ValueError("an atomic batch needs at least two messages")

    async def append_many(self, appends: Iterable[Append]) -> list[Version]:
        """Pipeline appends to many aggregates without waiting for each acknowledgement.

        Each `Append` holds one event; an aggregate may appear once per call when its expected
        version is given (the next expected sequence is unknown until the previous ack returns).
        Returns the new versions in order; raises the first failure after all have settled.

        Acks come back on one inbox of our own rather than through nats-py's `publish_async`,
        which leaves a refused publish's future pending forever (nats-io/nats.py#985).
        """
        inbox = await self._ack_inbox()
        trace = observability.inject()
        pending: list[tuple[Append, asyncio.Future[_PubAck]]] = []
        loop = asyncio.get_running_loop()
        not_sent: Exception | None = None
        try:
            for append in appends:
                if len(append.events) != 1:
                    raise ValueError("append_many takes one event per Append; use append_together for more")
                msg_id, payload = self._envelopes(append, trace)[0]
                await self._in_flight.acquire()
                future: asyncio.Future[_PubAck] = loop.create_future()
                future.add_done_callback(self._release_in_flight)
                self._next_ack += 1
                token = str(self._next_ack)
                self._acks[token] = future
                try:
                    await self._nc.publish(
                        append.subject,
                        payload,
                        reply=f"{inbox}.{token}",
                        headers=_headers(msg_id, append.events[0], append.expected),
                    )
                except nats.errors.Error as err:
                    del self._acks[token]
                    future.cancel()  # frees its in-flight slot
                    raise _not_sent(append.subject, err) from err
                pending.append((append, future))
        except Exception as err:
            not_sent = err  # report it once what was already sent has settled
        versions, failure = await self._settle_pipelined(pending)
        if not_sent is not None:
            raise not_sent
        if failure is not None:
            raise failure
        return versions

    async def _settle_pipelined(
        self, pending: list[tuple[Append, asyncio.Future[_PubAck]]]
    ) -> tuple[list[Version], Exception | None]:
        """Wait for the acks of what was sent; the new versions, and the first failure if any."""
        if not pending:
            return [], None
        _, late = await asyncio.wait([f for _, f in pending], timeout=self._timeout)
        if late:
            for token in [t for t, f in self._acks.items() if f in late]:
                del self._acks[token]
            for future in late:
                future.set_exception(
                    ServiceUnavailable(f"JetStream did not acknowledge within {self._timeout:g}s")
                )
        versions: list[Version] = []
        failure: Exception | None = None
        for append, future in pending:
            error = future.exception()
            ack = None if error else future.result()
            if error is None and ack is not None and ack.error is not None:
                error = self._append_error(append.subject, append.expected, ack.error)
            if error is not None or ack is None:
                failure = failure or (error if isinstance(error, Exception) else InternalError(repr(error)))
                versions.append(Version())
            else:
                versions.append(_after(append, ack.seq))
        return versions, failure

    async def _ack_inbox(self) -> str:
        if self._ack_prefix is None:
            self._ack_prefix = self._nc.new_inbox()
            await self._nc.subscribe(f"{self._ack_prefix}.*", cb=self._on_ack)
        return self._ack_prefix

    async def _on_ack(self, msg: Any) -> None:
        future = self._acks.pop(msg.subject.rsplit(".", 1)[-1], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(api.Header.STATUS) == "503":
            future.set_exception(ServiceUnavailable(f"no stream stores what was appended ({msg.subject})"))
        else:
            future.set_result(_ack_decoder.decode(msg.data))

    def _release_in_flight(self, _: asyncio.Future[_PubAck]) -> None:
        self._in_flight.release()

    async def _request(
        self, subject: str, payload: bytes, headers: dict[str, str], *, allow_empty: bool = False
    ) -> _PubAck:
        try:
            reply = await self._nc.request(subject, payload, timeout=self._timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise ServiceUnavailable(
                f"no stream stores {subject!r}: are Headwater's streams set up (hwctl up)?"
            ) from None
        except nats.errors.TimeoutError:
            raise ServiceUnavailable(
                f"JetStream did not acknowledge an append to {subject!r} within {self._timeout:g}s"
            ) from None
        except nats.errors.Error as err:
            raise _not_sent(subject, err) from err
        if not reply.data:
            if allow_empty:
                return _PubAck()
            raise InternalError(f"empty acknowledgement for an append to {subject!r}")
        return _ack_decoder.decode(reply.data)

    def _append_error(self, subject: str, expected: Version | None, error: _ApiError) -> Exception:
        if error.err_code == WRONG_LAST_SEQUENCE:
            return _conflict(subject, expected, error.description)
        if error.err_code == BATCH_DUPLICATE_MSG_ID:
            # A retried decision whose events are already stored: re-read, and the caller will
            # find its command applied (Runtime.execute answers from what it did).
            return ConcurrencyConflict(
                f"the events for {subject} were stored already (a retry); re-reading it", subject=subject
            )
        return InternalError(
            f"JetStream refused an append to {subject!r}: {error.description} (code {error.err_code})"
        )

    # --- reading -----------------------------------------------------------------------------------

    async def version(self, stream: str, subject: str) -> Version:
        """Where the aggregate stands now, read from the stream leader (read-after-write coherent)."""
        try:
            raw = await self._js.get_last_msg(stream, subject)
        except NotFoundError:
            return Version.new()
        count = _count_decoder.decode(raw.data).version if raw.data else 0
        return Version(raw.seq, count)

    async def last_sequence(self, stream: str, subjects: Sequence[str]) -> int:
        """The stream sequence of the newest message on any of `subjects` (0 if none)."""
        last = 0
        for subject in subjects:
            try:
                last = max(last, (await self._js.get_last_msg(stream, subject)).seq)
            except NotFoundError:
                continue
        return last

    async def read(self, stream: str, subject: str, event_type: type[E]) -> list[Stored]:
        """Every event of one aggregate, oldest first (events of unknown types are left out)."""
        decoder = msgspec.json.Decoder(Envelope[event_type])  # type: ignore[valid-type]
        out: list[Stored] = []
        for msg in await read_messages(self._js, stream, subject, timeout=self._timeout):
            try:
                out.append(Stored(msg.metadata.sequence.stream, msg.subject, decoder.decode(msg.data)))
            except msgspec.ValidationError:
                continue  # a type this reader does not know: skip it, as projections do
        return out


async def read_messages(js: Any, stream: str, subject: str, *, timeout: float = 5.0) -> list[Any]:
    """Every message on `subject` (wildcards allowed) as stored now, oldest first."""
    try:
        last = (await js.get_last_msg(stream, subject)).seq
    except NotFoundError:
        return []
    out: list[Any] = []
    done = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        out.append(msg)
        if msg.metadata.sequence.stream >= last and not done.done():
            done.set_result(None)

    sub = await js.subscribe(
        subject, stream=stream, cb=on_msg, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
    )
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise ServiceUnavailable(f"reading {subject!r} from {stream} timed out after {timeout:g}s") from None
    finally:
        await sub.unsubscribe()
    return out
