"""Running user code on one datum as a local process, with the datum's files at `/pfs`.

User code opens `/pfs/<input>/...` and writes `/pfs/out/...` literally, and several datums may run
at once on one machine, so each needs its own `/pfs`. Two ways, chosen once at start:

- `namespace` (preferred): the command runs in a private mount namespace (`unshare`, from
  util-linux) where the datum's directory is bind-mounted on `/pfs`; nobody else sees it. Needs
  root, or unprivileged user namespaces (then `unshare -r` maps the user to root inside).
- `rewrite` (fallback, where the platform forbids namespaces): `/pfs` in the command's arguments,
  its stdin and its environment is rewritten to the datum's directory. Code that builds `/pfs`
  paths itself must then read them from the environment (`$<input>`, `$HW_PFS`).

`HW_WORKER_ISOLATION` forces one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

PFS = "/pfs"
NAMESPACE = "namespace"
REWRITE = "rewrite"
_MOUNT_THEN_RUN = 'mount --bind "$0" /pfs && exec "$@"'

LineSink = Callable[[str, str], Awaitable[None]]  # (stream, line)


@dataclass(frozen=True)
class Isolation:
    mode: str
    prefix: tuple[str, ...] = ()  # what goes before the command in namespace mode

    def argv(self, pfs: str, cmd: Sequence[str]) -> list[str]:
        if self.mode == NAMESPACE:
            return [*self.prefix, "sh", "-c", _MOUNT_THEN_RUN, pfs, *cmd]
        return [rewrite(arg, pfs) for arg in cmd]

    def text(self, value: str, pfs: str) -> str:
        """What user code sees of a path or text naming `/pfs`."""
        return value if self.mode == NAMESPACE else rewrite(value, pfs)


def rewrite(value: str, pfs: str) -> str:
    return value.replace(PFS + "/", pfs + "/") if value != PFS else pfs


def _probe(prefix: tuple[str, ...]) -> bool:
    with tempfile.TemporaryDirectory(prefix="hw-probe-") as scratch:
        marker = os.path.join(scratch, "probe")
        with open(marker, "w") as f:
            f.write("ok")
        argv = [*prefix, "sh", "-c", _MOUNT_THEN_RUN, scratch, "cat", f"{PFS}/probe"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0 and done.stdout == b"ok"


def choose_isolation(forced: str = "") -> Isolation:
    """The best way this machine allows (or the forced one, if it works)."""
    if forced == REWRITE:
        return Isolation(REWRITE)
    if not os.path.isdir(PFS):
        with contextlib.suppress(OSError):
            os.makedirs(PFS, exist_ok=True)  # an empty mount point; datums' files never land in it
    if os.path.isdir(PFS):
        for prefix in (
            ("unshare", "--mount", "--propagation", "private", "--"),
            ("unshare", "--map-root-user", "--mount", "--propagation", "private", "--"),
        ):
            if _probe(prefix):
                return Isolation(NAMESPACE, prefix)
    if forced == NAMESPACE:
        raise RuntimeError(
            "HW_WORKER_ISOLATION=namespace, but this machine does not allow a private mount namespace "
            "(unshare --mount failed, or /pfs cannot be made)"
        )
    return Isolation(REWRITE)


@dataclass(frozen=True)
class Outcome:
    code: int | None  # None: killed after the timeout
    seconds: float

    def ok(self, accept: Sequence[int]) -> bool:
        return self.code is not None and (self.code == 0 or self.code in accept)


async def run(
    argv: Sequence[str],
    *,
    stdin: bytes,
    env: Mapping[str, str],
    timeout: float,
    on_line: LineSink,
) -> Outcome:
    """Run `argv` to its end (or kill its process group after `timeout` seconds, if not 0),
    passing each line it prints to `on_line`."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            start_new_session=True,  # its own process group: a timeout kills what it started too
        )
    except OSError as err:
        await on_line("stderr", f"could not start {argv[0]!r}: {err}")
        return Outcome(127, time.monotonic() - started)

    async def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it need not read stdin
            proc.stdin.write(stdin)
            await proc.stdin.drain()
        proc.stdin.close()

    async def pump(stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while line := await stream.readline():
            await on_line(name, line.decode("utf-8", "replace").rstrip("\n"))

    work = asyncio.gather(feed(), pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"), proc.wait())
    try:
        await asyncio.wait_for(asyncio.shield(work), timeout or None)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await work
        return Outcome(None, time.monotonic() - started)
    except asyncio.CancelledError:  # the worker is stopping: leave no process behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return Outcome(proc.returncode, time.monotonic() - started)
