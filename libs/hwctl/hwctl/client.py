"""Headwater's Python client: send commands to services, get results back (synchronous).

    from hwctl.client import Client
    with Client.connect() as hw:                 # finds the instance `hwctl up` started
        hw.request("fs", "create_repo", {"repo": "images"})
        repos = hw.request("fs", "list_repos")

Results are the JSON the service returned (dicts and lists); failures raise the errors of
`hw_events.errors` (`UserError`, `TransientError`, ...) with the service's message.
"""

from __future__ import annotations

import json
import os
import re
import time

from hw_events import subjects
from hw_events.errors import HeadwaterError, InternalError, ServiceUnavailable, TransientError, from_wire
from hwctl.home import Home
from hwctl.natsclient import Connection, NatsError, NoResponders, RequestTimeout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RETRY_FOR = 30.0  # seconds a retrying request keeps trying through transient failures
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def new_traceparent() -> str:
    """W3C trace context for one hwctl call: continues `$TRACEPARENT` if set, else starts a trace."""
    given = os.environ.get("TRACEPARENT", "")
    trace_id = given.split("-")[1] if _TRACEPARENT.match(given) else os.urandom(16).hex()
    return f"00-{trace_id}-{os.urandom(8).hex()}-01"


class NotRunning(ServiceUnavailable):
    """No Headwater instance is known for this HW_HOME."""


class Client:
    def __init__(self, nats_url: str, *, timeout: float = 30.0) -> None:
        self.nats_url = nats_url
        self.timeout = timeout
        try:
            self._conn = Connection(nats_url, timeout=min(timeout, 5.0))
        except NatsError as err:
            raise ServiceUnavailable(f"{err}; is Headwater running? (`hwctl up` starts it)") from None
        self.traceparent = new_traceparent()

    @classmethod
    def connect(cls, home: Home | None = None, *, timeout: float = 30.0) -> Client:
        """Connect to the instance recorded in `$HW_HOME` (or `$HW_NATS_URL`)."""
        home = home or Home()
        url = home.nats_url()
        if url is None:
            raise NotRunning(f"Headwater is not running (HW_HOME={home.path}); start it with `hwctl up`")
        return cls(url, timeout=timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self,
        service: str,
        command: str,
        fields: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retry: bool = False,
    ) -> Any:
        """Send `command` (its tag, e.g. `create_repo`) with `fields` to `service`; return the result.

        With `retry`, a transient failure (the service restarting, a concurrent change) is retried
        for up to RETRY_FOR seconds with the same command id, so the command still lands once.
        """
        body = json.dumps({"id": os.urandom(16).hex(), **(fields or {})}).encode()
        deadline: float | None = None  # counted from the first failure, however long that took
        pause = 0.2
        while True:
            try:
                return self._send(service, command, body, timeout)
            except TransientError:
                deadline = deadline or time.monotonic() + RETRY_FOR
                if not retry or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def next_message(self, stream: str, subject: str, seq: int) -> tuple[int, bytes] | None:
        """The first message of `stream` at or after `seq` on `subject` (wildcards allowed), with
        its sequence, read by JetStream's direct get; None when there is none (yet)."""
        request = json.dumps({"seq": seq, "next_by_subj": subject}).encode()
        try:
            reply = self._conn.request(f"$JS.API.DIRECT.GET.{stream}", request, timeout=self.timeout)
        except (NatsError, NoResponders, RequestTimeout) as err:
            raise ServiceUnavailable(f"could not read {stream}: {err}") from None
        if reply.status.startswith(("404", "408")):
            return None
        return int(reply.headers.get("Nats-Sequence", seq)), reply.data

    def wait_for(
        self, service: str, command: str, fields: dict[str, Any], *, timeout: float, what: str
    ) -> Any:
        """Ask a `wait_*` query again and again (each answered within a minute, also across a
        restart of the service) until it answers, or `timeout` seconds (0: no limit) have passed."""
        limit = timeout or 365 * 24 * 3600.0
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            ask = {**fields, "timeout": max(min(left, 60.0), 0.1)}
            try:
                return self.request(service, command, ask, timeout=min(left, 60.0) + 10)
            except TransientError:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailable(f"{what} did not happen within {timeout:g}s") from None
                time.sleep(0.2)

    def _send(self, service: str, command: str, body: bytes, timeout: float | None) -> Any:
        wait = self.timeout if timeout is None else timeout
        try:
            msg = self._conn.request(
                subjects.command_subject(service, command),
                body,
                headers={"traceparent": self.traceparent},
                timeout=wait,
            )
        except NoResponders:
            raise ServiceUnavailable(
                f"no {service} service is running to handle {command} (`hwctl status` shows what runs)",
                service=service,
            ) from None
        except RequestTimeout:
            raise ServiceUnavailable(
                f"the {service} service did not answer {command} within {wait:g}s", service=service
            ) from None
        except NatsError as err:
            raise ServiceUnavailable(str(err)) from None
        return decode_reply(msg.data)

    def health(
        self, services: tuple[str, ...] = subjects.SERVICES, *, timeout: float = 2.0
    ) -> dict[str, Any]:
        """Each service's health reply (None for one that did not answer within `timeout`)."""
        requests = [(subjects.health_subject(s), b"{}", None) for s in services]
        try:
            replies = self._conn.request_many(requests, timeout=timeout)
        except NatsError as err:
            raise ServiceUnavailable(str(err)) from None
        out: dict[str, Any] = {}
        for service, reply in zip(services, replies, strict=True):
            if reply is None or reply.status.startswith("503"):
                out[service] = None
            else:
                out[service] = decode_reply(reply.data)
        return out


def decode_reply(data: bytes) -> Any:
    try:
        reply = json.loads(data)
    except ValueError:
        raise InternalError(f"a service sent a reply that is not JSON: {data[:80]!r}") from None
    if not reply.get("ok"):
        error = from_wire(reply.get("error") or {})
        raise error
    return reply.get("result")


__all__ = ["Client", "HeadwaterError", "NotRunning", "decode_reply", "new_traceparent"]
