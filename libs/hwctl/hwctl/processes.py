"""Starting, finding and stopping local processes (nats-server, weed, the services).

Used by `hwctl up/down/status` and by the test fixtures, so both start servers the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time

TYPE_CHECKING = False  # `hwctl status` imports this module: keep it light
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping, Sequence


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different ports nothing listens on right now: each is held until all are picked
    (asked for one by one, the OS may hand out the same free port twice)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str, port: int, *, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once something accepts connections on host:port; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with code {proc.returncode} before listening on {port}")
        time.sleep(0.02)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:g}s")


def find_binary(name: str) -> str:
    """`name` from this interpreter's environment (where pip put it), else from PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    import shutil

    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(name)
    return found


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped counts as gone)."""
    if pid <= 0:  # 0 and negatives name process groups, never one of ours
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know


def pid_runs(pid: int, needle: str) -> bool:
    """Whether `pid` is alive and its command line mentions `needle` (guards against reused pids)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return needle.encode() in cmdline.read()
    except OSError:
        return True


def start_detached(
    argv: Sequence[str], *, log_path: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (it outlives us and ignores our Ctrl-C); output to `log_path`."""
    import subprocess

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    return proc


def stop_pids(pids: Sequence[int], *, timeout: float = 15.0) -> list[int]:
    """SIGTERM them all, wait up to `timeout`, SIGKILL what is left; return the pids that needed it."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if pid_alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if pid_alive(pid)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return left


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """Stop a child we started: SIGTERM, then SIGKILL after `timeout`; always reaped."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
