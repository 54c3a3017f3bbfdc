"""The command bus: request-reply over core NATS, one queue group per owning service.

A command travels to `hw.cmd.<service>.<tag>` as JSON (the command's fields; `type` may be left out,
the subject names it). Exactly one instance of the service answers with

    {"ok": true, "result": ...}                      on success, or
    {"ok": false, "error": {"kind", "code", "message", "service"}}

where `kind` is `user` (the request is wrong; do not retry), `transient` (retry may help) or
`internal` (a bug). A malformed command gets a `user` error naming what is wrong, and the service
carries on. The W3C trace context rides in the request headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgspec
import nats.errors
from opentelemetry import trace

from hw_events import observability, subjects
from hw_events.errors import (
    HeadwaterError,
    InternalError,
    MalformedMessage,
    ServiceUnavailable,
    UserError,
    from_wire,
)
from hw_events.messages import Command, tag_of

T = TypeVar("T")
Handler = Callable[[Any], Awaitable[Any]]

_encoder = msgspec.json.Encoder()


class _Ok(msgspec.Struct):
    result: Any = None
    ok: bool = True


class _Failed(msgspec.Struct):
    error: dict[str, Any]
    ok: bool = False


class _AnyReply(msgspec.Struct):
    ok: bool
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: dict[str, Any] | None = None


_reply_decoder = msgspec.json.Decoder(_AnyReply)


def encode_ok(result: Any) -> bytes:
    return _encoder.encode(_Ok(result=result))


def encode_error(error: HeadwaterError) -> bytes:
    return _encoder.encode(_Failed(error=error.to_wire()))


def decode_reply(data: bytes, reply_type: type[T] | None) -> T | None:
    """The result of a reply, decoded as `reply_type`; raises the error a failed reply carries."""
    reply = _reply_decoder.decode(data)
    if not reply.ok:
        raise from_wire(reply.error or {})
    if reply_type is None:
        return None
    return msgspec.json.decode(reply.result, type=reply_type)


class CommandServer:
    """Answers one service's commands; each handler gets the decoded command, returns the result."""

    def __init__(
        self,
        nc: Any,
        service: str,
        handlers: Mapping[type[Command], Handler],
        *,
        max_in_flight: int = 256,
    ) -> None:
        self._nc = nc
        self.service = service
        self._handlers = {
            tag_of(cls): (msgspec.json.Decoder(cls), handler) for cls, handler in handlers.items()
        }
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Any = None
        self._log = observability.log()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            subjects.command_wildcard(self.service),
            queue=subjects.queue_group(self.service),
            cb=self._on_request,
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking commands, then let those in flight finish (up to `timeout`)."""
        if self._sub is not None:
            await self._sub.drain()  # commands already delivered to us are still handled
            self._sub = None
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in late:
                task.cancel()

    async def _on_request(self, msg: Any) -> None:
        # Handlers run concurrently: a slow one (a wait, a large listing) must not hold up the rest.
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Any) -> None:
        tag = msg.subject.rsplit(".", 1)[-1]
        parent = observability.extract(msg.headers)
        with observability.tracer().start_as_current_span(
            f"{self.service} {tag}", context=parent, kind=trace.SpanKind.SERVER
        ) as span:
            try:
                reply = encode_ok(await self._dispatch(tag, msg.data))
            except HeadwaterError as err:
                err.service = err.service or self.service
                span.set_attribute("headwater.error.kind", err.kind)
                if err.kind == "internal":
                    self._log.error("command_failed", command=tag, error=err.message)
                reply = encode_error(err)
            except Exception as err:
                self._log.exception("command_crashed", command=tag)
                span.record_exception(err)
                internal = InternalError(
                    f"the {self.service} service failed on {tag}: {type(err).__name__}: {err} "
                    f"(a bug in Headwater; the {self.service} log has the details)",
                    service=self.service,
                )
                reply = encode_error(internal)
        if msg.reply:
            await self._respond(msg, tag, reply)

    async def _respond(self, msg: Any, tag: str, reply: bytes) -> None:
        """Send the reply; one that cannot be sent becomes an error the caller sees, not a timeout."""
        try:
            await msg.respond(reply)
        except nats.errors.MaxPayloadError:
            too_big = InternalError(
                f"the reply to {tag} is {len(reply):,} bytes, more than NATS carries in one message "
                f"({self._nc.max_payload:,}); this listing needs paging (a limit of Headwater)",
                service=self.service,
            )
            await self._respond(msg, tag, encode_error(too_big))
        except nats.errors.Error as err:
            self._log.warning("reply_lost", command=tag, error=f"{type(err).__name__}: {err}")

    async def _dispatch(self, tag: str, data: bytes) -> Any:
        entry = self._handlers.get(tag)
        if entry is None:
            known = ", ".join(sorted(self._handlers))
            raise UserError(
                f"the {self.service} service has no command {tag!r} (it knows: {known})", code="unknown"
            )
        decoder, handler = entry
        try:
            command = decoder.decode(data or b"{}")
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise MalformedMessage(f"malformed {tag} command: {err}") from None
        return await handler(command)


class CommandClient:
    """Sends commands to services and returns their typed results (async; used by services and tests)."""

    def __init__(self, nc: Any, *, timeout: float = 10.0) -> None:
        self._nc = nc
        self._timeout = timeout

    async def request(
        self,
        service: str,
        command: Command,
        reply_type: type[T] | None = None,
        *,
        timeout: float | None = None,
    ) -> T | None:
        tag = tag_of(type(command))
        wait = self._timeout if timeout is None else timeout
        with observability.tracer().start_as_current_span(
            f"send {service} {tag}", kind=trace.SpanKind.CLIENT
        ):
            headers = observability.inject()
            try:
                msg = await self._nc.request(
                    subjects.command_subject(service, tag),
                    _encoder.encode(command),
                    timeout=wait,
                    headers=headers,
                )
            except nats.errors.NoRespondersError:
                raise ServiceUnavailable(
                    f"no {service} service is running to handle {tag} (`hwctl status` shows what runs)",
                    service=service,
                ) from None
            except nats.errors.TimeoutError:
                raise ServiceUnavailable(
                    f"the {service} service did not answer {tag} within {wait:g}s", service=service
                ) from None
        return decode_reply(msg.data, reply_type)
