"""Where a local Headwater keeps its files: `$HW_HOME` (default `~/.headwater`).

runtime.json    how to reach the running instance (NATS URL, who started what)
run/<name>.pid  one pid file per process started by `hwctl up`
logs/<name>.log each process's output (JSON lines for the services)
nats/           nats-server's configuration and JetStream store (the log)
data/           object storage on local disk
"""

from __future__ import annotations

import json
import os

from hw_storage import config


def home_dir() -> str:
    return config.home_dir(os.environ)


class Runtime:
    """What `hwctl up` recorded about the instance it started or joined.

    A plain class, not a dataclass: `dataclasses` costs ~6 ms to import, half a bare interpreter.
    """

    def __init__(
        self,
        *,
        nats_url: str,
        monitor_url: str = "",
        nats_pid: int = 0,  # 0: an external NATS we did not start
        nats_port: int = 0,
        monitor_port: int = 0,
        started: str = "",
        services: dict[str, int] | None = None,  # name -> pid
        storage: dict[str, str] | None = None,  # the services' HW_STORAGE* / HW_S3_* settings, no secrets
    ) -> None:
        self.nats_url = nats_url
        self.monitor_url = monitor_url
        self.nats_pid = nats_pid
        self.nats_port = nats_port
        self.monitor_port = monitor_port
        self.started = started
        self.services = dict(services or {})
        self.storage = dict(storage or {})

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


class Home:
    def __init__(self, path: str | None = None) -> None:
        self.path = path or home_dir()

    def sub(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def runtime_file(self) -> str:
        return self.sub("runtime.json")

    def log_file(self, name: str) -> str:
        return self.sub("logs", f"{name}.log")

    def pid_file(self, name: str) -> str:
        return self.sub("run", f"{name}.pid")

    def ensure(self) -> None:
        for part in ("run", "logs", "nats", "data"):
            os.makedirs(self.sub(part), exist_ok=True)

    def load(self) -> Runtime | None:
        try:
            with open(self.runtime_file, encoding="utf-8") as f:
                return Runtime(**json.load(f))  # keyword arguments, as saved by to_json
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # unreadable: treat as not running; `hwctl up` rewrites it

    def save(self, runtime: Runtime) -> None:
        tmp = self.runtime_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(runtime.to_json(), f, indent=2)
        os.replace(tmp, self.runtime_file)
        for name, pid in runtime.services.items():
            self._write_pid(name, pid)
        if runtime.nats_pid:
            self._write_pid("nats", runtime.nats_pid)

    def _write_pid(self, name: str, pid: int) -> None:
        with open(self.pid_file(name), "w", encoding="utf-8") as f:
            f.write(f"{pid}\n")

    def clear(self) -> None:
        """Forget the running instance (data and logs stay)."""
        for path in [self.runtime_file, *(self.sub("run", n) for n in _listdir(self.sub("run")))]:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def nats_url(self) -> str | None:
        """How clients reach NATS: `$HW_NATS_URL`, else what `hwctl up` recorded."""
        url = os.environ.get("HW_NATS_URL")
        if url:
            return url
        runtime = self.load()
        return runtime.nats_url if runtime else None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
