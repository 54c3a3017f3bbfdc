"""Errors that say whose fault it is and whether retrying helps.

Three branches, and every error crossing the bus carries which one it is:
- `UserError`: the request is wrong (bad name, missing repo). Retrying the same request fails the
  same way; work queues dead-letter it at once.
- `TransientError`: something was briefly unavailable or changed underneath (a concurrent append,
  a service that did not answer). Retrying may well succeed; work queues nak it with a delay.
- `InternalError`: a bug in Headwater. The message says where to look.

This module imports nothing heavy: the CLI decodes replies with it on its fast path.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs ~2 ms to import; the CLI's fast path avoids it
if TYPE_CHECKING:
    from typing import Any, ClassVar


class HeadwaterError(Exception):
    """Base of every error Headwater raises on purpose."""

    kind: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False
    default_code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, code: str | None = None, service: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.service = service

    def to_wire(self) -> dict[str, Any]:
        """The error as it travels in a reply: `{"kind", "code", "message", "service"}`."""
        return {"kind": self.kind, "code": self.code, "message": self.message, "service": self.service}


class UserError(HeadwaterError):
    """The request is wrong; the message names what and why. Never retried."""

    kind = "user"
    default_code = "invalid"


class NotFound(UserError):
    default_code = "not_found"


class AlreadyExists(UserError):
    default_code = "already_exists"


class MalformedMessage(UserError):
    """A message on the bus could not be decoded; it is rejected, never retried."""

    default_code = "malformed"


class TransientError(HeadwaterError):
    """Briefly unavailable or changed underneath: retrying may succeed."""

    kind = "transient"
    retryable = True
    default_code = "unavailable"


class ConcurrencyConflict(TransientError):
    """The aggregate moved on since it was read. Re-read, decide again, and retry."""

    default_code = "conflict"

    def __init__(
        self,
        message: str,
        *,
        subject: str = "",
        expected: int | None = None,
        actual: int | None = None,
        service: str | None = None,
    ) -> None:
        super().__init__(message, service=service)
        self.subject = subject
        self.expected = expected
        self.actual = actual


class ServiceUnavailable(TransientError):
    """A service did not answer: not running, overloaded, or NATS is unreachable."""

    default_code = "unavailable"


class InternalError(HeadwaterError):
    """A bug in Headwater: not the user's fault, and retrying will not help."""


_BY_KIND: dict[str, type[HeadwaterError]] = {
    "user": UserError,
    "transient": TransientError,
    "internal": InternalError,
}
_BY_CODE: dict[str, type[HeadwaterError]] = {
    "not_found": NotFound,
    "already_exists": AlreadyExists,
    "malformed": MalformedMessage,
    "conflict": ConcurrencyConflict,
    "unavailable": ServiceUnavailable,
}


def from_wire(error: dict[str, Any]) -> HeadwaterError:
    """Rebuild an error from a reply, keeping its kind even for codes this version does not know."""
    kind = str(error.get("kind", "internal"))
    code = str(error.get("code", kind))
    cls = _BY_CODE.get(code, _BY_KIND.get(kind, InternalError))
    if cls.kind != kind:  # a newer service may reuse a code under another kind: trust the kind
        cls = _BY_KIND.get(kind, InternalError)
    message = str(error.get("message", "no message"))
    service = error.get("service")
    if cls is ConcurrencyConflict:
        return ConcurrencyConflict(message, service=service)
    return cls(message, code=code, service=service)
