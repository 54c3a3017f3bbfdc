"""hwctl up / status / down and the repo commands, typed as a user would, against real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from hw_events import subjects
from hwctl import processes
from hwctl.home import Home
from hwctl.natsclient import Connection
from tests.e2e.cli import hwctl, stored_events
from tests.infra import NatsServer


def runtime(home: Path) -> Any:
    loaded = Home(str(home)).load()
    assert loaded is not None
    return loaded


def status_rows(*args: str) -> dict[str, dict[str, Any]]:
    result = hwctl("status", "-o", "json", *args, check=False)
    return {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}


def test_up_status_repos_down(hw_home: Path) -> None:
    up = hwctl("up")
    assert "Headwater is running" in up.stdout
    for service in subjects.SERVICES:
        assert f"started {service} (pid" in up.stderr
    rows = status_rows()
    assert [r["state"] for r in rows.values()] == ["running"] + ["ready"] * 5
    assert rows["fs"]["replay"][0]["stream"] == "HW_FS"
    pids = [r["pid"] for r in rows.values()]
    assert all(processes.pid_alive(pid) for pid in pids)

    hwctl("create", "repo", "images", "-d", "raw images")
    hwctl("create", "repo", "labels")
    table = hwctl("list", "repo").stdout.splitlines()
    assert table[0].split() == ["NAME", "CREATED", "SIZE", "(MASTER)", "DESCRIPTION"]
    assert [line.split()[0] for line in table[1:]] == ["labels", "images"]  # newest first
    listed = [json.loads(line) for line in hwctl("list", "repo", "-o", "json").stdout.splitlines()]
    assert [r["name"] for r in listed] == ["labels", "images"]
    assert set(listed[1]) >= {"name", "created", "size_bytes", "description"}
    assert listed[1]["description"] == "raw images"
    assert json.loads(hwctl("inspect", "repo", "images", "-o", "json").stdout)["size_bytes"] == 0

    exists = hwctl("create", "repo", "images", check=False)
    assert (exists.returncode, exists.stderr.strip()) == (1, 'error: repo "images" already exists')
    bad = hwctl("create", "repo", "no.dots", check=False)
    assert bad.returncode == 1
    assert 'invalid repo name "no.dots"' in bad.stderr
    missing = hwctl("inspect", "repo", "nope", check=False)
    assert (missing.returncode, missing.stderr.strip()) == (1, 'error: repo "nope" not found')
    hwctl("delete", "repo", "labels")
    assert [r["name"] for r in map(json.loads, hwctl("list", "repo", "-o", "json").stdout.splitlines())] == [
        "images"
    ]

    down = hwctl("down")
    assert "stopped nats-server" in down.stderr
    assert not any(processes.pid_alive(pid) for pid in pids)
    after = hwctl("status", check=False)
    assert after.returncode == 1
    assert "Headwater is not running" in after.stderr


def test_up_twice_starts_one_set_and_data_survives_down_and_up(hw_home: Path) -> None:
    hwctl("up")
    first = runtime(hw_home)
    hwctl("create", "repo", "kept")
    again = hwctl("up")
    assert "started" not in again.stderr
    assert runtime(hw_home).services == first.services
    assert runtime(hw_home).nats_pid == first.nats_pid

    hwctl("down")
    hwctl("up")
    assert runtime(hw_home).services != first.services
    assert [json.loads(line)["name"] for line in hwctl("list", "repo", "-o", "json").stdout.splitlines()] == [
        "kept"
    ]


def test_stale_pid_files_are_handled(hw_home: Path) -> None:
    hwctl("up")
    hwctl("create", "repo", "survivor")
    before = runtime(hw_home)
    for pid in before.services.values():  # everything dies without a chance to clean up
        os.kill(pid, signal.SIGKILL)
    os.kill(before.nats_pid, signal.SIGKILL)
    assert hwctl("status", check=False).returncode == 1

    # A pid file that now names some other program must not be mistaken for a service, nor killed.
    bystander = subprocess.Popen(["sleep", "60"])
    before.services["fs"] = bystander.pid
    Home(str(hw_home)).save(before)
    try:
        hwctl("up")
        after = runtime(hw_home)
        assert set(after.services.values()).isdisjoint(before.services.values())
        assert [r["state"] for r in status_rows().values()] == ["running"] + ["ready"] * 5
        assert "survivor" in hwctl("list", "repo").stdout
        hwctl("down")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_service_that_died_shows_in_status_and_up_restarts_it(hw_home: Path) -> None:
    hwctl("up")
    scheduler = runtime(hw_home).services["scheduler"]
    os.kill(scheduler, signal.SIGKILL)
    result = hwctl("status", check=False)
    assert result.returncode == 1
    assert status_rows()["scheduler"]["state"] == "stopped"

    again = hwctl("up")
    assert "started scheduler" in again.stderr
    assert "started fs" not in again.stderr
    assert status_rows()["scheduler"]["state"] == "ready"


def test_up_joins_an_external_nats(hw_home: Path, fresh_nats: NatsServer) -> None:
    hwctl("up", "--nats", fresh_nats.url)
    rows = status_rows()
    assert rows["nats"]["state"] == "external"
    assert [rows[s]["state"] for s in subjects.SERVICES] == ["ready"] * 5
    hwctl("create", "repo", "shared")
    hwctl("down")
    Connection(fresh_nats.url).close()  # still up: not ours to stop


def test_the_trace_spans_cli_service_and_the_events_it_appends(hw_home: Path, tmp_path: Path) -> None:
    traces = tmp_path / "spans.jsonl"
    hwctl("up", env={"HW_TRACE_FILE": str(traces)})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    hwctl("create", "repo", "traced", env={"TRACEPARENT": f"00-{trace_id}-00f067aa0ba902b7-01"})
    hwctl("down")  # flushes

    spans = [json.loads(line) for line in traces.read_text().splitlines()]
    handled = [s for s in spans if s["name"] == "fs create_repo"]
    assert [s["context"]["trace_id"] for s in handled] == [f"0x{trace_id}"]
    assert handled[0]["resource"]["attributes"]["service.name"] == "headwater-fs"

    hwctl("up")
    [stored] = stored_events(runtime(hw_home).nats_url, "hw.fs.evt.traced")
    assert stored["event"]["type"] == "repo_created"
    assert stored["trace"]["traceparent"].split("-")[1] == trace_id


def test_a_nats_that_cannot_start_is_reported_and_not_left_behind(hw_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = hwctl("up", "--monitor-port", str(port), check=False)
    assert result.returncode == 75
    assert "nats-server did not start" in result.stderr
    conf = str(hw_home / "nats" / "nats.conf")
    survivors = subprocess.run(["pgrep", "-f", conf], capture_output=True, text=True, check=False)
    assert survivors.stdout.strip() == ""


def test_switching_to_an_external_nats_stops_the_old_services(hw_home: Path, fresh_nats: NatsServer) -> None:
    hwctl("up")
    old = runtime(hw_home)
    os.kill(old.nats_pid, signal.SIGKILL)  # its services live on, dialling the dead server
    hwctl("up", "--nats", fresh_nats.url)
    assert not any(processes.pid_runs(pid, f"hw_{name}") for name, pid in old.services.items())
    assert [status_rows()[s]["state"] for s in subjects.SERVICES] == ["ready"] * 5
