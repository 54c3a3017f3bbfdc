"""The sync client against a scripted server on a local socket: protocol edge cases."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from hwctl.natsclient import Connection, NatsError, NoResponders


def serve_once(
    script: Callable[[socket.socket, list[str]], None], pong: bytes = b"PONG\r\n"
) -> Iterator[str]:
    """A one-connection server that says INFO, answers CONNECT/PING with `pong`, then runs `script`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b'INFO {"server_id":"test","headers":true}\r\n')
            buf = b""
            while b"PING\r\n" not in buf:
                buf += conn.recv(4096)
            conn.sendall(pong)
            inboxes: list[str] = []
            script(conn, inboxes)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"nats://127.0.0.1:{listener.getsockname()[1]}"
    thread.join(5)
    listener.close()


def read_requests(conn: socket.socket, count: int) -> list[str]:
    """Reply subjects of the next `count` (H)PUBs the client sent."""
    buf, replies = b"", []
    while len(replies) < count:
        buf += conn.recv(65536)
        replies = [line.split()[2] for line in buf.split(b"\r\n") if line.startswith((b"PUB ", b"HPUB "))]
    return [r.decode() for r in replies]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from serve_once(request.param)


def slow_payload(conn: socket.socket, _: list[str]) -> None:
    [reply] = read_requests(conn, 1)
    conn.sendall(f"MSG {reply} 1 10\r\n01234".encode())
    time.sleep(0.3)  # the rest arrives after the client's deadline
    conn.sendall(b"56789\r\n")
    [reply] = read_requests(conn, 1)
    conn.sendall(f"MSG {reply} 1 2\r\nok\r\n".encode())


@pytest.mark.parametrize("server", [slow_payload], indirect=True)
def test_a_payload_that_arrives_after_the_deadline_is_read_whole(server: str) -> None:
    with Connection(server) as conn:
        assert conn.request("x", b"", timeout=0.1).data == b"0123456789"
        assert conn.request("y", b"", timeout=1).data == b"ok"


def no_responders(conn: socket.socket, _: list[str]) -> None:
    [reply] = read_requests(conn, 1)
    conn.sendall(f"HMSG {reply} 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n".encode())


@pytest.mark.parametrize("server", [no_responders], indirect=True)
def test_no_responders_is_its_own_error(server: str) -> None:
    with Connection(server) as conn, pytest.raises(NoResponders):
        conn.request("nobody.home", b"", timeout=1)


def test_a_refused_connection_is_reported_with_the_servers_words() -> None:
    server = serve_once(lambda conn, _: None, pong=b"-ERR 'Authorization Violation'\r\n")
    url = next(server)
    with pytest.raises(NatsError, match="refused the connection: Authorization Violation"):
        Connection(url, timeout=2)
    next(server, None)


def test_nothing_listening_names_the_url() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(NatsError, match=f"cannot reach NATS at nats://127.0.0.1:{port}"):
        Connection(f"nats://127.0.0.1:{port}", timeout=1)
