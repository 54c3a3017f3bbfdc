"""Pipelines and jobs as a user drives them with hwctl: the seeds' workflows, incremental processing,
updates, failures, deferred processing, chains, and restarts in the middle of a job.

User code here is small Python scripts that know nothing of Headwater: they read `/pfs/<input>`
and write `/pfs/out`, as the seeds' examples do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from hw_events import pps
from hw_events.bus import CommandClient
from hwctl.home import Home
from hwctl.processes import pid_runs
from tests.e2e.cli import HWCTL, error_of, hwctl, json_lines, stored_events

PYTHON = "python3"


@pytest.fixture
def headwater(hw_home: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("HW_DATUM_ACK_WAIT", "3")  # a killed worker's datum goes elsewhere in seconds
    hwctl("up")
    return Home(str(hw_home))


def script(folder: Path, name: str, code: str) -> str:
    path = folder / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def pipeline_spec(
    folder: Path, name: str, cmd: list[str], err_cmd: list[str] | None = None, **more: Any
) -> str:
    spec = {
        "pipeline": {"name": name},
        "transform": {"cmd": cmd, **({"err_cmd": err_cmd} if err_cmd else {})},
        "input": more.pop("input", {"pfs": {"repo": "data", "glob": "/*"}}),
        **more,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)
    return found


def jobs(pipeline: str) -> list[dict[str, Any]]:
    """Oldest first."""
    return list(reversed(json_lines("list", "job", "-p", pipeline)))


def settled_jobs(pipeline: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Once the pipeline has `count` jobs and all of them ended."""
    finals = ("success", "failure", "killed")
    return eventually(
        lambda: (
            (found := jobs(pipeline))
            and len(found) == count
            and all(j["state"] in finals for j in found)
            and found
        ),
        f"{count} finished jobs of {pipeline}",
        timeout,
    )


def files(ref: str) -> dict[str, str]:
    """Every file of `repo@ref` with its content."""
    out = {}
    for info in json_lines("glob", "file", f"{ref}:/**"):
        if info["type"] == "file":
            out[info["path"]] = hwctl("get", "file", f"{ref}:{info['path']}").stdout
    return out


def put(ref: str, path: str, text: str) -> str:
    hwctl("put", "file", f"{ref}:{path}", stdin=text.encode())
    repo, branch = ref.split("@")
    return {b["name"]: b["head"] for b in json_lines("list", "branch", repo)}[branch]


WORDS = """
    import os
    for name in sorted(os.listdir("/pfs/data")):
        words = len(open(f"/pfs/data/{name}").read().split())
        with open(f"/pfs/out/{name}", "w") as out:
            out.write(f"{words}\\n")
    print("counted", name, "datum", os.environ["PACH_DATUM_ID"], "at", os.environ["data"],
          "commit", os.environ["data_COMMIT"], "job", os.environ["PACH_JOB_ID"])
"""


def test_the_five_step_workflow(headwater: Home, tmp_path: Path) -> None:
    # 1-2: a repo with data
    hwctl("create", "repo", "data")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, text in {"a.txt": "one", "b.txt": "one two", "c.txt": "one two three"}.items():
        (inputs / name).write_text(text)
    hwctl("put", "file", "-r", "data@master:/", "-f", str(inputs))
    head = json_lines("inspect", "branch", "data@master")[0]["head"]
    # 3: a pipeline, as YAML on stdin
    code = script(tmp_path, "words.py", WORDS)
    spec = textwrap.dedent(f"""\
        pipeline:
          name: words
        description: counts words
        transform:
          cmd: [{PYTHON}, {code}]
        input:
          pfs: {{repo: data, glob: /*}}
    """)
    hwctl("create", "pipeline", "-f", "-", stdin=spec.encode())
    # 4: its job, found by the pipeline and by the input commit
    (job,) = settled_jobs("words", 1)
    assert job["state"] == "success"
    assert (job["data_processed"], job["data_skipped"], job["data_total"], job["data_failed"]) == (3, 0, 3, 0)
    assert [j["id"] for j in json_lines("list", "job", f"words@{head}")] == [job["id"]]
    assert job["inputs"] == [{"name": "data", "repo": "data", "branch": "master", "commit": head}]
    table = hwctl("list", "job", "-p", "words").stdout.splitlines()
    assert table[0].split() == [
        "PIPELINE",
        "ID",
        "STARTED",
        "DURATION",
        "RESTART",
        "PROGRESS",
        "DL",
        "UL",
        "STATE",
    ]
    assert "3 + 0 / 3" in table[1]
    assert table[1].rstrip().endswith("success")
    assert hwctl("wait", "job", f"words@{job['id']}").returncode == 0
    # 5: the output, one file per input, in the output repo at the job's commit
    assert files("words@master") == {"/a.txt": "1\n", "/b.txt": "2\n", "/c.txt": "3\n"}
    assert files(f"words@{job['id']}") == files("words@master")
    output_commit = json_lines("inspect", "commit", "words@master")[0]
    assert (output_commit["id"], output_commit["origin"]) == (job["id"], "AUTO")
    datums = json_lines("list", "datum", f"words@{job['id']}")
    assert sorted((d["files"], d["state"]) for d in datums) == [
        (["data:/a.txt"], "success"),
        (["data:/b.txt"], "success"),
        (["data:/c.txt"], "success"),
    ]
    # what the code printed, with the environment it saw
    lines = hwctl("logs", "-p", "words").stdout.splitlines()
    by_file = {line.split()[1]: line.split() for line in lines}
    assert sorted(by_file) == ["a.txt", "b.txt", "c.txt"]
    for name, datum in ((d["files"][0].split("/")[-1], d["id"]) for d in datums):
        assert by_file[name][3:] == [datum, "at", f"/pfs/data/{name}", "commit", head, "job", job["id"]]
    assert hwctl("logs", "-p", "words", "--datum", datums[0]["id"]).stdout.count("counted") == 1
    listed = hwctl("list", "pipeline").stdout.splitlines()
    assert listed[0].split()[:4] == ["NAME", "VERSION", "INPUT", "CREATED"]
    assert listed[1].split()[:3] == ["words", "1", "data:/*"]
    assert "running / success" in listed[1]


VERSIONED = """
    import os, sys
    VERSION = "{version}"
    for name in os.listdir("/pfs/data"):
        text = open(f"/pfs/data/{{name}}").read()
        if VERSION == "v1" and "bad" in text:
            print("cannot read", name, file=sys.stderr)
            sys.exit(3)
        open(f"/pfs/out/{{name}}", "w").write(VERSION + ":" + text)
"""


def test_updates_keep_what_succeeded_retry_what_failed_and_reprocess_on_request(
    headwater: Home, tmp_path: Path
) -> None:
    hwctl("create", "repo", "data")
    put("data@master", "/a", "A")
    put("data@master", "/b", "B")
    code = script(tmp_path, "versioned.py", VERSIONED.format(version="v1"))
    spec = pipeline_spec(tmp_path, "ver", [PYTHON, code], datum_tries=2)
    hwctl("create", "pipeline", "-f", spec)
    settled_jobs("ver", 1)
    # A datum that fails: retried, then the job fails, naming it
    put("data@master", "/c", "bad C")
    failed = settled_jobs("ver", 2)[-1]
    assert failed["state"] == "failure"
    (bad,) = [d for d in json_lines("list", "datum", f"ver@{failed['id']}") if d["state"] == "failed"]
    assert bad["files"] == ["data:/c"]
    assert failed["reason"].startswith(f"datum {bad['id']} failed: user code exited with code 3 (2 tries)")
    assert hwctl("wait", "job", f"ver@{failed['id']}", check=False).returncode == 1
    assert hwctl("logs", "-p", "ver", "-j", failed["id"]).stdout.count("cannot read c") == 2
    assert files("ver@master") == {
        "/a": "v1:A",
        "/b": "v1:B",
    }  # the failed job's commit keeps the last output
    # Fixed code: only the failed datum runs; the output mixes both versions
    script(tmp_path, "versioned.py", VERSIONED.format(version="v2"))
    hwctl("update", "pipeline", "-f", spec)
    fixed = settled_jobs("ver", 3)[-1]
    assert (fixed["state"], fixed["data_processed"], fixed["data_skipped"]) == ("success", 1, 2)
    assert files("ver@master") == {"/a": "v1:A", "/b": "v1:B", "/c": "v2:bad C"}
    assert json_lines("inspect", "pipeline", "ver")[0]["version"] == 2
    # --reprocess: everything with the new code; the earlier output stays readable by its id
    hwctl("update", "pipeline", "-f", spec, "--reprocess")
    again = settled_jobs("ver", 4)[-1]
    assert (again["data_processed"], again["data_skipped"]) == (3, 0)
    assert files("ver@master") == {"/a": "v2:A", "/b": "v2:B", "/c": "v2:bad C"}
    assert files(f"ver@{fixed['id']}") == {"/a": "v1:A", "/b": "v1:B", "/c": "v2:bad C"}


def test_err_cmd_recovers_a_datum_and_collisions_fail_the_job(headwater: Home, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    put("data@master", "/ok", "fine")
    put("data@master", "/bad", "bad")
    code = script(tmp_path, "versioned.py", VERSIONED.format(version="v1"))
    hwctl("create", "pipeline", "-f", pipeline_spec(tmp_path, "rec", [PYTHON, code], err_cmd=["true"]))
    (job,) = settled_jobs("rec", 1)
    assert (job["state"], job["data_processed"], job["data_recovered"]) == ("success", 1, 1)
    assert "1 + 0 + 1 / 2" in hwctl("list", "job", "-p", "rec").stdout
    # every datum writes /same: the job fails, naming the path and both datums
    same = pipeline_spec(tmp_path, "same", ["sh", "-c", "echo x > /pfs/out/same"])
    hwctl("create", "pipeline", "-f", same)
    (collided,) = settled_jobs("same", 1)
    datums = sorted(d["id"] for d in json_lines("list", "datum", f"same@{collided['id']}"))
    assert collided["state"] == "failure"
    assert collided["reason"].startswith("duplicate path output by different datums (/same from ")
    assert all(d in collided["reason"] for d in datums)
    # a datum past datum_timeout fails saying so; a job past job_timeout is killed
    hwctl(
        "create",
        "pipeline",
        "-f",
        pipeline_spec(tmp_path, "nap", ["sleep", "30"], datum_timeout="1s", datum_tries=1),
    )
    (napped,) = settled_jobs("nap", 1)
    assert napped["state"] == "failure"
    assert "failed: timed out after 1s (datum_timeout) (1 try) (and 1 more)" in napped["reason"]
    hwctl("create", "pipeline", "-f", pipeline_spec(tmp_path, "long", ["sleep", "30"], job_timeout="2s"))
    (long,) = settled_jobs("long", 1)
    assert (long["state"], long["reason"]) == ("killed", "job timed out after 2s (job_timeout)")


def test_deferred_processing_and_head_moves_make_one_job_each(headwater: Home, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    hwctl("create", "branch", "data@master")
    copy = pipeline_spec(tmp_path, "copy", ["sh", "-c", "cp -r /pfs/data/. /pfs/out/"])
    hwctl("create", "pipeline", "-f", copy)
    settled_jobs("copy", 1)  # over the empty master
    staged = [put("data@staging", f"/f{i}", str(i)) for i in range(1, 11)]
    time.sleep(1)
    assert len(jobs("copy")) == 1  # nothing on staging is processed
    # three moves, three jobs one after another, each named after the commit master moved to
    for ref in ("staging^7", "staging^3", "staging"):
        hwctl("create", "branch", "data@master", "--head", ref)
    moved = settled_jobs("copy", 4)[1:]
    assert [j["id"] for j in moved] == [staged[2], staged[6], staged[9]]
    assert [j["id"] for j in json_lines("list", "job", f"copy@{staged[9]}")] == [staged[9]]
    for earlier, later in itertools.pairwise(moved):
        assert earlier["finished"] <= later["finished"]
    assert len(files(f"copy@{staged[2]}")) == 3
    assert len(files("copy@master")) == 10
    # rewinding: the output reflects the older input
    hwctl("create", "branch", "data@master", "--head", "staging^5")
    settled_jobs("copy", 5)
    assert sorted(files("copy@master")) == [f"/f{i}" for i in range(1, 6)]


@pytest.mark.parametrize("isolation", ["namespace", "rewrite"])
def test_chained_pipelines(
    hw_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolation: str
) -> None:
    monkeypatch.setenv("HW_WORKER_ISOLATION", isolation)  # rewrite: /pfs in the commands is rewritten
    hwctl("up")
    hwctl("create", "repo", "data")
    upper = pipeline_spec(
        tmp_path,
        "upper",
        ["sh", "-c", "for f in /pfs/data/*; do tr a-z A-Z < $f > /pfs/out/$(basename $f); done"],
    )
    hwctl("create", "pipeline", "-f", upper)
    total = pipeline_spec(
        tmp_path,
        "total",
        ["sh", "-c", "cat /pfs/upper/* | sort > /pfs/out/all"],
        input={"pfs": {"repo": "upper", "glob": "/"}},
    )
    hwctl("create", "pipeline", "-f", total)
    put("data@master", "/x", "hello\n")
    commit = put("data@master", "/y", "world\n")
    eventually(lambda: files("total@master").get("/all") == "HELLO\nWORLD\n", "the chain's end has both")
    assert [j["id"] for j in json_lines("list", "job", f"total@{commit}")] == [commit]
    code, err = error_of("delete", "pipeline", "upper")
    assert code == 1
    assert 'pipeline "total" reads the output of "upper"' in err
    hwctl("delete", "pipeline", "total")
    assert "total" not in [r["name"] for r in json_lines("list", "repo")]
    hwctl("create", "pipeline", "-f", total)  # made again under the same name: a new pipeline
    eventually(lambda: files("total@master").get("/all") == "HELLO\nWORLD\n", "made again, it runs again")


def test_adding_one_file_to_a_thousand_processes_one_datum(headwater: Home, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(1000):
        (many / f"f{i:04}").write_text(str(i))
    hwctl("put", "file", "-r", "data@master:/", "-f", str(many))
    hwctl(
        "create", "pipeline", "-f", pipeline_spec(tmp_path, "copy", ["sh", "-c", "cp /pfs/data/* /pfs/out/"])
    )
    (first,) = eventually(lambda: (j := settled_jobs("copy", 1)) and j, "the first job", timeout=240)
    assert (first["data_processed"], first["data_total"]) == (1000, 1000)
    put("data@master", "/new", "new")
    second = settled_jobs("copy", 2)[-1]
    assert (second["data_processed"], second["data_skipped"], second["data_total"]) == (1, 1000, 1001)
    output = json_lines("glob", "file", "copy@master:/*")
    assert len(output) == 1001


def stop(runtime: Any, service: str, sig: signal.Signals) -> None:
    """Signal a service and wait until it is gone (`hwctl up` would take it for running)."""
    pid = runtime.services[service]
    os.kill(pid, sig)
    eventually(lambda: not pid_runs(pid, f"hw_{service}"), f"{service} stopped")


def test_restarts_in_the_middle_of_a_job_lose_and_double_nothing(
    headwater: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scheduler started again after a SIGKILL has no snapshot of this short log: with helpers
    # from 1 event, one of its two projections is replayed by a helper process and adopted.
    monkeypatch.setenv("HW_REPLAY_HELPERS_FROM", "1")
    monkeypatch.setenv("HW_LOG_LEVEL", "info")  # (the log shows the helper answered)
    hwctl("create", "repo", "data")
    for i in range(16):
        put("data@master", f"/f{i:02}", f"{i}\n")
    slow = pipeline_spec(
        tmp_path, "slow", ["sh", "-c", "sleep 0.4; cat /pfs/data/* >> /pfs/out/$(ls /pfs/data)"]
    )
    hwctl("create", "pipeline", "-f", slow)
    runtime: Any = headwater.load()
    eventually(lambda: jobs("slow") and jobs("slow")[0]["data_processed"] >= 2, "the job under way")
    stop(runtime, "worker", signal.SIGKILL)
    stop(runtime, "scheduler", signal.SIGKILL)
    hwctl("up")
    assert "replay_helper_answered" in Path(headwater.log_file("scheduler")).read_text()
    eventually(lambda: jobs("slow")[0]["data_processed"] >= 8, "the job goes on")
    runtime = headwater.load()
    stop(runtime, "scheduler", signal.SIGTERM)
    stop(runtime, "worker", signal.SIGKILL)
    hwctl("up")
    (job,) = settled_jobs("slow", 1)
    assert (job["state"], job["data_processed"], job["data_total"]) == ("success", 16, 16)
    assert files("slow@master") == {f"/f{i:02}": f"{i}\n" for i in range(16)}  # appended once each


def test_bad_specs_are_refused_naming_the_field(headwater: Home, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "pipeline: {name: p}\ntransform: {cmd: [echo], imag: x}\ninput: {pfs: {repo: data, glob: /*}}\n"
    )
    code, err = error_of("create", "pipeline", "-f", str(bad))
    assert code == 1
    assert "transform.imag is not a pipeline spec field" in err
    code, err = error_of(
        "create",
        "pipeline",
        "-f",
        pipeline_spec(tmp_path, "p", ["true"], input={"pfs": {"repo": "nope", "glob": "/"}}),
    )
    assert code == 1
    assert 'input repo "nope" not found' in err
    code, err = error_of("create", "pipeline", "-f", str(tmp_path / "missing.json"))
    assert code == 1
    assert "cannot read the pipeline spec" in err
    code, err = error_of("update", "pipeline", "-f", pipeline_spec(tmp_path, "p", ["true"]), "--reprocess")
    assert code == 1
    assert 'pipeline "p" not found' in err
    assert json_lines("list", "pipeline") == []
    assert (
        subprocess.run([HWCTL, "list", "repo"], capture_output=True, text=True, check=True).stdout.count("\n")
        == 2
    )


def pool_pids(pipeline: str) -> list[int]:
    """The worker processes of `pipeline` (the worker service starts them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"hw_worker.pool" in argv and pipeline.encode() in argv:
                found.append(int(entry))
    return sorted(found)


def test_parallel_workers_share_a_job_and_a_killed_one_loses_nothing(headwater: Home, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    for i in range(12):
        put("data@master", f"/f{i:02}", f"{i}\n")
    code = script(
        tmp_path,
        "slow.py",
        """
        import os, time
        (name,) = os.listdir("/pfs/data")
        time.sleep(0.5)
        with open(f"/pfs/out/{name}", "a") as out:
            out.write(open(f"/pfs/data/{name}").read() + os.environ["HW_WORKER"] + "\\n")
        """,
    )
    hwctl(
        "create",
        "pipeline",
        "-f",
        pipeline_spec(tmp_path, "par", [PYTHON, code], parallelism_spec={"constant": 2}),
    )
    workers = eventually(lambda: len(pool_pids("par")) == 2 and pool_pids("par"), "two worker processes")
    eventually(lambda: jobs("par") and jobs("par")[0]["data_processed"] >= 2, "the job under way")
    os.kill(workers[0], signal.SIGKILL)  # mid-datum: its datum goes to the other worker
    (job,) = settled_jobs("par", 1)
    assert (job["state"], job["data_processed"], job["data_total"]) == ("success", 12, 12)
    outputs = files("par@master")
    assert sorted(outputs) == [f"/f{i:02}" for i in range(12)]
    assert all(text.startswith(f"{i}\n") and text.count("\n") == 2 for i, text in enumerate(outputs.values()))
    assert len({text.split("\n")[1] for text in outputs.values()}) >= 2  # both workers took datums
    eventually(lambda: len(pool_pids("par")) == 2, "the killed worker is replaced")
    hwctl("delete", "pipeline", "par")
    eventually(lambda: pool_pids("par") == [], "a deleted pipeline's workers stop")


def test_a_batch_taken_over_after_a_kill_runs_only_its_unreported_datums(
    headwater: Home, tmp_path: Path
) -> None:
    hwctl("create", "repo", "data")
    for i in range(12):
        put("data@master", f"/f{i:02}", f"{i}\n")
    runs, go = tmp_path / "runs", tmp_path / "go"  # outside /pfs: each run of user code leaves a line
    code = script(
        tmp_path,
        "tally.py",
        f"""
        import os, time
        (name,) = os.listdir("/pfs/data")
        with open({str(runs)!r}, "a") as runs:
            runs.write(os.environ["HW_DATUM_ID"] + "\\n")
        with open({str(runs)!r}) as runs:
            count = len(runs.read().split())
        time.sleep(0.4)
        while count >= 5 and not os.path.exists({str(go)!r}):  # the 5th waits: the worker dies in it
            time.sleep(0.05)
        with open(f"/pfs/out/{{name}}", "a") as out:
            out.write(open(f"/pfs/data/{{name}}").read())
        """,
    )
    spec = pipeline_spec(tmp_path, "tally", [PYTHON, code], datum_set_spec={"number": 12})  # one batch
    hwctl("create", "pipeline", "-f", spec)
    (worker,) = eventually(lambda: pool_pids("tally"), "a worker process")
    # The batch reports what it has done once a second: after the first report, the 5th datum
    # waits until the worker is killed.
    job = eventually(
        lambda: (found := jobs("tally")) and found[0]["data_processed"] >= 2 and found[0], "a report"
    )
    eventually(lambda: len(runs.read_text().split()) >= 5, "the 5th datum running")
    reported = {d["id"] for d in json_lines("list", "datum", f"tally@{job['id']}") if d["state"] == "success"}
    os.kill(worker, signal.SIGKILL)
    go.write_text("")
    (done,) = settled_jobs("tally", 1)
    assert (done["state"], done["data_processed"], done["data_total"]) == ("success", 12, 12)
    assert files("tally@master") == {f"/f{i:02}": f"{i}\n" for i in range(12)}
    ran = runs.read_text().split()
    assert 2 <= len(reported) < 5
    assert all(ran.count(datum) == 1 for datum in reported)  # reported: not run again
    assert ran[4] not in reported
    assert ran.count(ran[4]) == 2  # the one the worker died in ran again
    assert len(set(ran)) == 12


@pytest.fixture
def patient_headwater(hw_home: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """Headwater whose work queue waits 10 minutes before it takes a task from a silent worker: what
    comes back sooner was handed back by the worker service."""
    monkeypatch.setenv("HW_DATUM_ACK_WAIT", "600")
    hwctl("up")
    return Home(str(hw_home))


def test_a_datum_that_kills_its_worker_fails_alone_and_the_rest_of_its_batch_succeeds(
    patient_headwater: Home, tmp_path: Path
) -> None:
    hwctl("create", "repo", "data")
    for i in range(6):
        put("data@master", f"/f{i}", f"{i}\n")
    code = script(
        tmp_path,
        "poison.py",
        """
        import os, signal
        (name,) = os.listdir("/pfs/data")
        if name == "f2":  # kills the worker running it, every time
            os.kill(int(os.environ["HW_WORKER"].rsplit("-", 1)[1]), signal.SIGKILL)
        with open(f"/pfs/out/{name}", "w") as out:
            out.write(open(f"/pfs/data/{name}").read())
        """,
    )
    spec = pipeline_spec(
        tmp_path, "poison", [PYTHON, code], datum_set_spec={"number": 6}, parallelism_spec={"constant": 2}
    )  # one batch
    hwctl("create", "pipeline", "-f", spec)
    # The batch dies once (and is split, one datum a part), then f2 alone 3 times. Each time the
    # worker service hands the task back at once (not after HW_DATUM_ACK_WAIT) to the other worker,
    # and starts the dead one again, a little later each time.
    (job,) = settled_jobs("poison", 1, timeout=120)
    assert (job["state"], job["data_processed"], job["data_failed"]) == ("failure", 5, 1)
    assert "gave up after 3 attempts" in job["reason"]
    states = {d["files"][0]: d["state"] for d in json_lines("list", "datum", f"poison@{job['id']}")}
    assert states == {f"data:/f{i}": "failed" if i == 2 else "success" for i in range(6)}


async def _settled(nats_url: str, query: pps.SettledDatums) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        return list(await CommandClient(nc).request(pps.SERVICE, query, list[str]) or [])
    finally:
        await nc.close()


def test_a_batch_queued_for_a_pipeline_since_deleted_runs_nothing_in_one_made_by_its_name(
    headwater: Home, tmp_path: Path
) -> None:
    hwctl("create", "repo", "data")
    put("data@master", "/a", "a\n")
    go = tmp_path / "go"
    code = script(
        tmp_path,
        "gate.py",
        f"""
        import os, time
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        """,
    )
    hwctl("create", "pipeline", "-f", pipeline_spec(tmp_path, "again", [PYTHON, code]))
    (job,) = eventually(lambda: (found := jobs("again")) and found[0]["state"] == "running" and found, "job")
    datums = [d["id"] for d in json_lines("list", "datum", f"again@{job['id']}")]
    runtime = headwater.load()
    assert runtime is not None

    def settled(created: str) -> list[str]:
        query = pps.SettledDatums(pipeline="again", job=job["id"], datums=datums, pipeline_created=created)
        return asyncio.run(_settled(runtime.nats_url, query))

    assert settled("") == []  # (a task that does not say: as queued before tasks said)
    assert settled("2020-01-01T00:00:00+00:00") == datums  # queued for an older pipeline of the name
    go.write_text("")
    (done,) = settled_jobs("again", 1)
    assert (done["state"], done["data_processed"]) == ("success", 1)  # its own tasks ran


def test_the_queued_datums_of_a_job_killed_by_an_update_do_not_run(headwater: Home, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    for i in range(6):
        put("data@master", f"/f{i}", f"{i}\n")
    runs = tmp_path / "runs"
    code = script(
        tmp_path,
        "log_run.py",
        f"""
        import os, sys, time
        with open({str(runs)!r}, "a") as runs:
            runs.write(os.environ["HW_JOB_ID"] + "\\n")
        time.sleep(float(sys.argv[1]))
        """,
    )
    one_by_one = {"datum_set_spec": {"number": 1}}
    hwctl("create", "pipeline", "-f", pipeline_spec(tmp_path, "upd", [PYTHON, code, "0.5"], **one_by_one))
    eventually(lambda: runs.exists() and runs.read_text(), "the first datum running")
    hwctl("update", "pipeline", "-f", pipeline_spec(tmp_path, "upd", [PYTHON, code, "0"], **one_by_one))
    killed, done = settled_jobs("upd", 2)
    assert (killed["state"], done["state"], done["data_processed"]) == ("killed", "success", 6)
    ran = runs.read_text().split()
    assert ran.count(killed["id"]) <= 2  # the datum running at the update, at most one more: not 6
    assert ran.count(done["id"]) == 6


def test_a_job_runs_what_is_new_while_the_job_before_it_still_runs(headwater: Home, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    runs, starts = tmp_path / "runs", tmp_path / "starts"
    go, fail = tmp_path / "go", tmp_path / "fail-once"
    code = script(
        tmp_path,
        "upper.py",
        f"""
        import os, sys, time
        (name,) = os.listdir("/pfs/data")
        with open({str(starts)!r}, "a") as starts:
            starts.write(name + " " + os.environ["HW_JOB_ID"] + "\\n")
        while name == "slow" and not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        with open({str(runs)!r}, "a") as runs:
            runs.write(name + " " + os.environ["HW_JOB_ID"] + "\\n")
        if name == "slow" and os.path.exists({str(fail)!r}):
            os.remove({str(fail)!r})
            sys.exit(1)
        open(f"/pfs/out/{{name}}", "w").write(open(f"/pfs/data/{{name}}").read().upper())
        """,
    )

    def ran(job: str) -> list[str]:
        lines = runs.read_text().splitlines() if runs.exists() else []
        return sorted(line.split()[0] for line in lines if line.split()[1] == job)

    put("data@master", "/slow", "s")
    spec = pipeline_spec(tmp_path, "up", [PYTHON, code], parallelism_spec={"constant": 2}, datum_tries=1)
    hwctl("create", "pipeline", "-f", spec)
    first = eventually(lambda: (found := jobs("up")) and found[0]["state"] == "running" and found[0], "job 1")
    # A new file: the next job runs it at once; the unchanged /slow waits for the first job.
    second_id = put("data@master", "/quick", "q")
    eventually(lambda: ran(second_id) == ["quick"], "job 2's new datum running while job 1 runs")
    assert [j["state"] for j in jobs("up")] == ["running", "running"]
    go.write_text("")
    done = settled_jobs("up", 2)
    assert [j["state"] for j in done] == ["success", "success"]
    assert (done[1]["data_processed"], done[1]["data_skipped"]) == (1, 1)  # /slow kept from job 1
    assert (ran(first["id"]), ran(second_id)) == (["slow"], ["quick"])
    assert files("up@master") == {"/quick": "Q", "/slow": "S"}
    # Job 3 changes /slow and fails on it; job 4, started meanwhile, runs /slow again once job 3
    # failed (its base is job 2), and keeps /quick from job 2.
    go.unlink()
    fail.write_text("")
    third_id = put("data@master", "/slow", "t")
    eventually(lambda: [j["state"] for j in jobs("up")][2:] == ["running"], "job 3 running")
    fourth_id = put("data@master", "/other", "o")
    eventually(lambda: ran(fourth_id) == ["other"], "job 4's new datum running while job 3 runs")
    time.sleep(1)  # (a worker is free: were /slow not waiting for job 3, it would start now)
    assert f"slow {fourth_id}" not in starts.read_text()
    go.write_text("")
    done = settled_jobs("up", 4)
    assert [j["state"] for j in done[2:]] == ["failure", "success"]
    assert (done[3]["data_processed"], done[3]["data_skipped"]) == (2, 1)
    assert (ran(third_id), ran(fourth_id)) == (["slow"], ["other", "slow"])
    assert files("up@master") == {"/other": "O", "/quick": "Q", "/slow": "T"}
    assert [j["id"] for j in done] == [first["id"], second_id, third_id, fourth_id]


def test_datums_that_waited_for_an_earlier_job_run_before_datums_a_later_job_queued_at_once(
    headwater: Home, tmp_path: Path
) -> None:
    hwctl("create", "repo", "data")
    runs, go, go2 = tmp_path / "runs", tmp_path / "go", tmp_path / "go2"
    code = script(
        tmp_path,
        "order.py",
        f"""
        import os, sys, time
        (name,) = os.listdir("/pfs/data")
        job = os.environ["HW_JOB_ID"]
        with open({str(runs)!r}, "a") as runs:
            runs.write(name + " " + job + "\\n")
        first_job = open({str(runs)!r}).read().split()[1]
        if name == "a" and job == first_job:  # job 1 holds the one worker, then fails on /a
            while not os.path.exists({str(go)!r}):
                time.sleep(0.05)
            sys.exit(1)
        while name == "c" and not os.path.exists({str(go2)!r}):  # until job 2 queued what waited
            time.sleep(0.05)
        open(f"/pfs/out/{{name}}", "w").write(name)
        """,
    )
    put("data@master", "/a", "a")
    put("data@master", "/b", "b")
    hwctl("create", "pipeline", "-f", pipeline_spec(tmp_path, "order", [PYTHON, code], datum_tries=1))
    eventually(lambda: runs.exists() and runs.read_text(), "job 1 running /a")
    # Job 2 queues its new /c at once; /a and /b wait for job 1. So does job 3 with /d.
    second = put("data@master", "/c", "c")
    eventually(lambda: [j["state"] for j in jobs("order")] == ["running"] * 2, "job 2 running")
    third = put("data@master", "/d", "d")
    eventually(lambda: [j["state"] for j in jobs("order")] == ["running"] * 3, "job 3 running")
    go.write_text("")
    runtime = headwater.load()
    assert runtime is not None

    def queued(job: str) -> int:
        events = stored_events(runtime.nats_url, "hw.pps.evt.job.order", "HW_PPS")
        return sum(e["event"]["type"] == "datums_queued" and e["event"]["job"] == job for e in events)

    eventually(lambda: queued(second) == 2, "job 2 queueing what waited, once job 1 ended")
    go2.write_text("")
    done = settled_jobs("order", 3)
    assert [j["state"] for j in done] == ["failure", "success", "success"]
    ran = [tuple(line.split()) for line in runs.read_text().splitlines()]
    # Job 1 failed: job 2 runs /a and /b after all, and they go before job 3's /d, queued earlier.
    assert ran.index(("d", third)) > max(ran.index(("a", second)), ran.index(("b", second)))
    assert files("order@master") == {"/a": "a", "/b": "b", "/c": "c", "/d": "d"}


def test_a_stopped_pipeline_runs_nothing_until_started_then_catches_up(
    headwater: Home, tmp_path: Path
) -> None:
    hwctl("create", "repo", "data")
    for i in range(6):
        put("data@master", f"/f{i}", f"{i}\n")
    slow = pipeline_spec(tmp_path, "nap", ["sh", "-c", "sleep 0.5; cp /pfs/data/* /pfs/out/"])
    hwctl("create", "pipeline", "-f", slow)
    eventually(lambda: jobs("nap") and jobs("nap")[0]["state"] == "running", "the job under way")
    hwctl("stop", "pipeline", "nap")
    (killed,) = settled_jobs("nap", 1)
    assert (killed["state"], killed["reason"]) == ("killed", "killed because pipeline was stopped")
    eventually(lambda: pool_pids("nap") == [], "a stopped pipeline's workers stop")
    assert json_lines("inspect", "pipeline", "nap")[0]["state"] == "paused"
    put("data@master", "/f6", "6\n")
    time.sleep(1)
    assert [j["state"] for j in jobs("nap")] == ["killed", "created"]  # made, not run
    hwctl("start", "pipeline", "nap")
    done = settled_jobs("nap", 2)[-1]
    assert (done["state"], done["data_processed"], done["data_total"]) == ("success", 7, 7)
    assert sorted(files("nap@master")) == [f"/f{i}" for i in range(7)]


def test_an_input_trigger_defers_jobs_to_a_branch_of_its_own(headwater: Home, tmp_path: Path) -> None:
    hwctl("create", "repo", "data")
    put("data@master", "/f0", "0\n")
    every = {"pfs": {"repo": "data", "glob": "/*", "trigger": {"commits": 2}}}
    spec = pipeline_spec(tmp_path, "batch", ["sh", "-c", "cp /pfs/data/* /pfs/out/"], input=every)
    hwctl("create", "pipeline", "-f", spec)
    branches = {b["name"]: b for b in json_lines("list", "branch", "data")}
    assert branches["batch-trigger-1"]["trigger"] == {
        "branch": "master",
        "size": "",
        "commits": 2,
        "cron": "",
        "all": False,
    }
    (first,) = settled_jobs("batch", 1)  # the trigger branch starts at master's head: f0 is processed
    assert first["data_processed"] == 1
    put("data@master", "/f1", "1\n")
    time.sleep(1)
    assert len(jobs("batch")) == 1  # one new commit: not enough
    second = put("data@master", "/f2", "2\n")
    job = settled_jobs("batch", 2)[-1]
    assert job["id"] == second
    assert job["inputs"][0]["branch"] == "batch-trigger-1"
    assert sorted(files("batch@master")) == ["/f0", "/f1", "/f2"]
    every["pfs"]["trigger"] = {"commits": 3}
    spec = pipeline_spec(tmp_path, "batch", ["sh", "-c", "cp /pfs/data/* /pfs/out/"], input=every)
    hwctl("update", "pipeline", "-f", spec)
    trigger = json_lines("inspect", "branch", "data@batch-trigger-1")[0]["trigger"]
    assert trigger["commits"] == 3  # the same branch, the new trigger
    hwctl("delete", "pipeline", "batch")
    assert "batch-trigger-1" in [b["name"] for b in json_lines("list", "branch", "data")]


def test_restarts_at_random_points_leave_every_job_right(headwater: Home, tmp_path: Path) -> None:
    """Kill the scheduler, the worker service or one worker process at random moments while jobs
    run, many times; every job must still end, the last with every output once."""
    import random

    chance = random.Random(int(os.environ.get("HW_CHAOS_SEED", "5")))
    hwctl("create", "repo", "data")
    put("data@master", "/f00", "0\n")
    slow = pipeline_spec(
        tmp_path,
        "chaos",
        ["sh", "-c", "sleep 0.2; for f in /pfs/data/*; do cat $f >> /pfs/out/$(basename $f); done"],
        parallelism_spec={"constant": 2},
    )
    hwctl("create", "pipeline", "-f", slow)
    added = 1
    for _ in range(8):
        for _ in range(3):
            put("data@master", f"/f{added:02}", f"{added}\n")
            added += 1
        time.sleep(chance.uniform(0.2, 1.2))
        runtime: Any = headwater.load()
        victim = chance.choice(["scheduler", "worker", "pool"])
        if victim == "pool":
            pids = pool_pids("chaos")
            if pids:
                os.kill(chance.choice(pids), signal.SIGKILL)
        else:
            stop(runtime, victim, signal.SIGKILL)
            hwctl("up")
    finals = ("success", "failure", "killed")
    every = eventually(
        lambda: (found := jobs("chaos")) and all(j["state"] in finals for j in found) and found,
        "every job ended",
        timeout=120,
    )
    assert all(j["state"] == "success" for j in every), [(j["id"], j["state"], j["reason"]) for j in every]
    for job in every:
        assert job["data_processed"] + job["data_skipped"] == job["data_total"]
    assert every[-1]["data_total"] == added
    assert files("chaos@master") == {f"/f{i:02}": f"{i}\n" for i in range(added)}
