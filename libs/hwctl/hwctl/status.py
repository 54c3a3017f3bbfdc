"""What `hwctl status` shows: each process, its pid, its state, how far each service has replayed."""

from __future__ import annotations

from hw_events.errors import ServiceUnavailable
from hw_events.subjects import SERVICES
from hwctl import processes
from hwctl.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hwctl.home import Runtime


class ComponentStatus:
    """One row of `hwctl status` (`-o json` prints `to_json()`)."""

    def __init__(self, name: str, pid: int, state: str, replay: list[dict[str, Any]] | None = None) -> None:
        self.name = name
        self.pid = pid
        self.state = state  # running, stopped, external, ready, replaying, not answering
        self.replay = replay or []

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid or None, "state": self.state, "replay": self.replay}


def nats_alive(runtime: Runtime | None) -> bool:
    return bool(runtime and runtime.nats_pid and processes.pid_runs(runtime.nats_pid, "nats-server"))


def status(runtime: Runtime) -> list[ComponentStatus]:
    """Each process's state, and for each service how far it has replayed its streams."""
    rows: list[ComponentStatus] = []
    if runtime.nats_pid:
        rows.append(
            ComponentStatus("nats", runtime.nats_pid, "running" if nats_alive(runtime) else "stopped")
        )
    else:
        rows.append(ComponentStatus("nats", 0, "external"))
    try:
        with Client(runtime.nats_url, timeout=2.0) as client:
            health = client.health(timeout=1.0)
    except ServiceUnavailable:
        health = {}
    for service in SERVICES:
        pid = runtime.services.get(service, 0)
        answer = health.get(service)
        if answer is not None:
            state = "ready" if answer.get("ready") else "replaying"
            rows.append(
                ComponentStatus(service, int(answer.get("pid", pid)), state, list(answer.get("replay", [])))
            )
        elif pid and processes.pid_runs(pid, f"hw_{service}"):
            rows.append(ComponentStatus(service, pid, "not answering"))
        else:
            rows.append(ComponentStatus(service, pid, "stopped"))
    return rows
