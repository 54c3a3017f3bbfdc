"""A minimal, synchronous NATS client for request-reply: just what `hwctl` needs to ask a service.

Why not nats-py here: importing it (and asyncio under it) takes ~100 ms on our machines, ten
times a bare `python -c pass`, and `hwctl list repo` should be cheap enough to call in a loop.
This speaks the core text protocol only (INFO, CONNECT, PING/PONG, SUB, PUB/HPUB, MSG/HMSG) with
headers and no-responders; everything long-lived or JetStream-related uses nats-py.
"""

from __future__ import annotations

import json
import os
import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

_CRLF = b"\r\n"


class NatsError(Exception):
    """The connection failed or the server refused something."""


class NoResponders(NatsError):
    """Nobody subscribes to the subject a request went to."""


class RequestTimeout(NatsError):
    """A request got no reply in time."""


class Message:
    """A reply: subject, payload, headers, and the status line's code (`503` for no responders)."""

    __slots__ = ("data", "headers", "status", "subject")

    def __init__(self, subject: str, data: bytes, headers: dict[str, str], status: str = "") -> None:
        self.subject = subject
        self.data = data
        self.headers = headers
        self.status = status


def _parse_url(url: str) -> tuple[str, int, dict[str, str]]:
    rest = url.split("://", 1)[-1].rstrip("/")
    auth: dict[str, str] = {}
    if "@" in rest:
        cred, rest = rest.rsplit("@", 1)
        if ":" in cred:
            auth["user"], auth["pass"] = cred.split(":", 1)
        else:
            auth["auth_token"] = cred
    host, _, port = rest.rpartition(":")
    if not host:
        host, port = rest, "4222"
    return host.strip("[]"), int(port), auth


def _parse_headers(block: bytes) -> tuple[str, dict[str, str]]:
    lines = block.decode("utf-8", "replace").split("\r\n")
    status = lines[0][len("NATS/1.0") :].strip()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip()] = value.strip()
    return status, headers


class Connection:
    """One connection to a NATS server, used for a handful of requests, then closed."""

    def __init__(self, url: str, *, name: str = "hwctl", timeout: float = 5.0) -> None:
        host, port, auth = _parse_url(url)
        self.url = url
        try:
            # A bytes host skips the idna codec (an import of its own) for names that are plain ASCII.
            self._sock = socket.create_connection((host.encode(), port), timeout=timeout)  # type: ignore[arg-type]
        except OSError as err:
            raise NatsError(f"cannot reach NATS at {url}: {err.strerror or err}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self._inbox = "_INBOX." + os.urandom(11).hex()
        self._subscribed = False
        self._next = 0
        op, args = self._read_op(time.monotonic() + timeout)
        if op != b"INFO":
            raise NatsError(f"{url} does not look like a NATS server (it said {op!r})")
        info = json.loads(args)
        if info.get("tls_required"):
            import ssl

            self._sock = ssl.create_default_context().wrap_socket(self._sock, server_hostname=host)
        connect = {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "python-hwctl",
            "version": "0.1.0",
            "name": name,
            **auth,
        }
        self._send(b"CONNECT " + json.dumps(connect).encode() + _CRLF + b"PING" + _CRLF)
        while True:
            op, args = self._read_op(time.monotonic() + timeout)
            if op == b"PONG":
                break
            if op == b"-ERR":
                raise NatsError(f"NATS at {url} refused the connection: {args.decode().strip(chr(39))}")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self, subject: str, payload: bytes, *, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> Message:
        """Send one request and wait for its reply."""
        reply = self.request_many([(subject, payload, headers)], timeout=timeout)[0]
        if reply is None:
            raise RequestTimeout(f"no reply on {subject} within {timeout:g}s")
        if reply.status.startswith("503"):
            raise NoResponders(f"nobody answers on {subject}")
        return reply

    def request_many(
        self, requests: Sequence[tuple[str, bytes, dict[str, str] | None]], *, timeout: float = 5.0
    ) -> list[Message | None]:
        """Send several requests at once; return each reply (None where none came in time)."""
        if not self._subscribed:
            self._send(f"SUB {self._inbox}.* 1\r\n".encode())
            self._subscribed = True
        pending: dict[str, int] = {}
        out = bytearray()
        for index, (subject, payload, headers) in enumerate(requests):
            self._next += 1
            reply_to = f"{self._inbox}.{self._next}"
            pending[reply_to] = index
            if headers:
                block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                raw = block.encode()
                out += f"HPUB {subject} {reply_to} {len(raw)} {len(raw) + len(payload)}\r\n".encode()
                out += raw + payload + _CRLF
            else:
                out += f"PUB {subject} {reply_to} {len(payload)}\r\n".encode() + payload + _CRLF
        self._send(bytes(out))
        replies: list[Message | None] = [None] * len(requests)
        deadline = time.monotonic() + timeout
        while pending:
            try:
                message = self._next_message(deadline)
            except RequestTimeout:
                break
            index = pending.pop(message.subject, -1)
            if index >= 0:
                replies[index] = message
        return replies

    # --- protocol ----------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as err:
            raise NatsError(f"lost the connection to NATS at {self.url}: {err}") from None

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout("timed out")
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            raise RequestTimeout("timed out") from None
        except OSError as err:
            raise NatsError(f"lost the connection to NATS at {self.url}: {err}") from None
        if not chunk:
            raise NatsError(f"NATS at {self.url} closed the connection")
        self._buf += chunk

    def _read_line(self, deadline: float) -> bytes:
        while (end := self._buf.find(_CRLF)) < 0:
            self._fill(deadline)
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _read_exact(self, size: int, deadline: float) -> bytes:
        # The message line is read: its payload is on the way. Give it time even past the request's
        # deadline, since leaving it half-read would make the next reply unreadable.
        deadline = max(deadline, time.monotonic() + 5.0)
        while len(self._buf) < size + 2:
            self._fill(deadline)
        data = bytes(self._buf[:size])
        del self._buf[: size + 2]
        return data

    def _read_op(self, deadline: float) -> tuple[bytes, bytes]:
        line = self._read_line(deadline)
        op, _, args = line.partition(b" ")
        return op.upper(), args

    def _next_message(self, deadline: float) -> Message:
        while True:
            op, args = self._read_op(deadline)
            if op == b"MSG":
                parts = args.split()
                data = self._read_exact(int(parts[-1]), deadline)
                return Message(parts[0].decode(), data, {})
            if op == b"HMSG":
                parts = args.split()
                header_len, total = int(parts[-2]), int(parts[-1])
                raw = self._read_exact(total, deadline)
                status, headers = _parse_headers(raw[:header_len])
                return Message(parts[0].decode(), raw[header_len:], headers, status)
            if op == b"PING":
                self._send(b"PONG" + _CRLF)
            elif op == b"-ERR":
                raise NatsError(f"NATS at {self.url}: {args.decode().strip(chr(39))}")
            # +OK, PONG and INFO updates need nothing from us.
