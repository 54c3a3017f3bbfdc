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
import ctypes
import functools
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

PFS = "/pfs"
NAMESPACE = "namespace"
REWRITE = "rewrite"
OWN_NAMESPACE = "own-namespace"  # the worker process itself is in a private mount namespace
_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_PRIVATE, _MS_BIND = 0x4000, 0x40000, 0x1000
_MNT_DETACH = 2
_MOUNT_THEN_RUN = 'mount --bind "$0" /pfs && exec "$@"'
LAST_OUTPUT = 5.0  # seconds to read what is left in the pipes after the command ended

LineSink = Callable[[str, str], Awaitable[None]]  # (stream, line)


@dataclass(frozen=True)
class Isolation:
    mode: str
    prefix: tuple[str, ...] = ()  # what goes before the command in namespace mode

    @property
    def private(self) -> bool:
        """User code sees `/pfs` itself (not a rewritten path)."""
        return self.mode in (NAMESPACE, OWN_NAMESPACE)

    def argv(self, pfs: str, cmd: Sequence[str]) -> list[str]:
        if self.mode == NAMESPACE:
            return [*self.prefix, "sh", "-c", _MOUNT_THEN_RUN, pfs, *cmd]
        if self.mode == OWN_NAMESPACE:
            return list(cmd)
        return [rewrite(arg, pfs) for arg in cmd]

    def text(self, value: str, pfs: str) -> str:
        """What user code sees of a path or text naming `/pfs`."""
        return value if self.private else rewrite(value, pfs)

    @contextlib.contextmanager
    def mounted(self, pfs: str) -> Iterator[None]:
        """With its own namespace, the datum's folder is `/pfs` for as long as this lasts (one datum
        at a time per worker process); otherwise nothing to do here."""
        if self.mode != OWN_NAMESPACE:
            yield
            return
        _mount(pfs, PFS, _MS_BIND)
        try:
            yield
        finally:
            _libc().umount2(PFS.encode(), _MNT_DETACH)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    if _libc().mount(source.encode() if source else None, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or ''} on {target}: {os.strerror(err)}")


def _make_mount_point() -> None:
    """An empty `/pfs` to mount datums' folders on (their files never land in it), if allowed."""
    if not os.path.isdir(PFS):
        with contextlib.suppress(OSError):
            os.makedirs(PFS, exist_ok=True)


def enter_own_namespace() -> bool:
    """Move this process into a private mount namespace where `/pfs` can be mounted per datum
    without a process per datum to do it. Call before any thread starts (`unshare` refuses a
    process with threads); needs the right to mount (root). False when not allowed."""
    _make_mount_point()
    try:
        libc = _libc()
        if libc.unshare(_CLONE_NEWNS) != 0:
            return False
        _mount(None, "/", _MS_REC | _MS_PRIVATE)  # nothing mounted here leaks out, nor in
        with tempfile.TemporaryDirectory(prefix="hw-probe-") as probe:
            _mount(probe, PFS, _MS_BIND)
            libc.umount2(PFS.encode(), _MNT_DETACH)
    except OSError:
        return False
    return True


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


def choose_isolation(forced: str = "", *, own_namespace: bool = False) -> Isolation:
    """The best way this machine allows (or the forced one, if it works); `own_namespace`: this
    process already entered one (`enter_own_namespace`)."""
    if forced == REWRITE:
        return Isolation(REWRITE)
    if own_namespace:
        return Isolation(OWN_NAMESPACE)
    _make_mount_point()
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

    readers = asyncio.gather(feed(), pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
    code: int | None = None
    try:
        code = await asyncio.wait_for(_exit_code(proc), timeout or None)
    except TimeoutError:
        pass  # killed below, with whatever it started
    finally:  # also when the worker is stopping (cancelled): leave no process behind
        # What it left running in the background would hold its output open (and the datum with it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        await asyncio.wait_for(readers, LAST_OUTPUT)
    except TimeoutError:  # a process that left the group (setsid) still holds the pipes
        readers.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await readers
    if code is None:  # reap the killed process
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_exit_code(proc), LAST_OUTPUT)
    return Outcome(code, time.monotonic() - started)


async def _exit_code(proc: asyncio.subprocess.Process) -> int:
    """The exit code, once the process has exited. `proc.wait()` alone also waits for its pipes to
    close, which a child left running in the background may never do; so the code is also
    looked at every few milliseconds."""
    waiting = asyncio.ensure_future(proc.wait())
    try:
        pause = 0.005
        while not waiting.done():
            if proc.returncode is not None:
                return proc.returncode
            await asyncio.wait({waiting}, timeout=pause)
            pause = min(pause * 2, 0.1)
        return waiting.result()
    finally:
        waiting.cancel()
