"""What user code sees: its environment, its stdin, its paths when /pfs must be rewritten, and the
spec documents hwctl reads."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from hw_events.errors import UserError
from hw_events.pipeline_spec import Transform
from hw_events.pps import DATUM_FAILED, DATUM_RECOVERED, DatumTask, TaskInput
from hw_worker import domain, runner
from hwctl.commands import pipeline

TASK = DatumTask(
    pipeline="edges",
    job="j" * 32,
    datum="d" * 64,
    inputs=[
        TaskInput(name="images", repo="images", branch="master", commit="c" * 32, path="/a/b.png", layers=[]),
        TaskInput(name="all", repo="labels", branch="master", commit="e" * 32, path="/", layers=[]),
    ],
    transform=Transform(cmd=["run"], env={"MODE": "fast", "PATH": "/custom"}),
)


def test_user_code_gets_its_inputs_ids_and_spec_env_and_none_of_headwaters_settings() -> None:
    env = domain.datum_env(TASK, "/pfs", {"PATH": "/bin", "HOME": "/root", "HW_NATS_URL": "nats://x"}, "w1")
    assert env["images"] == "/pfs/images/a/b.png"
    assert env["all"] == "/pfs/all"
    assert (env["images_COMMIT"], env["all_COMMIT"]) == ("c" * 32, "e" * 32)
    for prefix in ("HW_", "PACH_"):
        assert env[f"{prefix}JOB_ID"] == env[f"{prefix}OUTPUT_COMMIT_ID"] == "j" * 32
        assert env[f"{prefix}DATUM_ID"] == "d" * 64
    assert env["PPS_PIPELINE_NAME"] == "edges"
    assert (env["MODE"], env["PATH"], env["HOME"]) == ("fast", "/custom", "/root")  # the spec wins
    assert "HW_NATS_URL" not in env


def test_stdin_lines_end_with_a_newline_and_err_cmd_decides_recovery() -> None:
    assert domain.stdin_of(["a", "b"]) == b"a\nb\n"
    assert domain.stdin_of([]) == b""
    assert domain.after_failures(True) == DATUM_RECOVERED
    assert domain.after_failures(False) == DATUM_FAILED
    assert domain.after_failures(None) == DATUM_FAILED


def test_rewriting_replaces_pfs_paths_only() -> None:
    rewrite = runner.Isolation(runner.REWRITE)
    assert rewrite.argv("/s/pfs", ["cp", "/pfs/data/x", "/pfs/out/", "/pfsx", "/pfs"]) == [
        "cp",
        "/s/pfs/data/x",
        "/s/pfs/out/",
        "/pfsx",
        "/s/pfs",
    ]
    namespace = runner.Isolation(runner.NAMESPACE, ("unshare", "--mount", "--"))
    argv = namespace.argv("/s/pfs", ["cat", "/pfs/data/x"])
    assert argv[:3] == ["unshare", "--mount", "--"]
    assert argv[-3:] == ["/s/pfs", "cat", "/pfs/data/x"]


def test_specs_are_read_as_yaml_or_json_one_or_several() -> None:
    yaml_two = "pipeline: {name: a}\n---\npipeline: {name: b}\n"
    assert [d["pipeline"]["name"] for d in pipeline.parse_specs(yaml_two, "f")] == ["a", "b"]
    json_two = '{"pipeline": {"name": "a"}}\n{\t"pipeline": {"name": "b"}}'
    assert [d["pipeline"]["name"] for d in pipeline.parse_specs(json_two, "f")] == ["a", "b"]
    with pytest.raises(UserError, match="holds no pipeline spec"):
        pipeline.parse_specs("", "f")
    with pytest.raises(UserError, match="a pipeline spec is an object"):
        pipeline.parse_specs("[1, 2]", "f")


@pytest.fixture
def served() -> Iterator[str]:
    class Spec(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/spec.yaml":
                self.send_error(404)
                return
            body = b"pipeline: {name: web}\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Spec)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_spec_is_read_from_a_url(served: str) -> None:
    assert pipeline.read_specs(f"{served}/spec.yaml") == [{"pipeline": {"name": "web"}}]
    with pytest.raises(UserError, match="cannot read the pipeline spec at"):
        pipeline.read_specs(f"{served}/missing.yaml")


async def _run(argv: list[str], timeout: float = 0) -> tuple[runner.Outcome, list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []

    async def sink(stream: str, line: str) -> None:
        lines.append((stream, line))

    outcome = await runner.run(
        argv, stdin=b"in\n", env={"PATH": "/usr/bin:/bin"}, timeout=timeout, on_line=sink
    )
    return outcome, lines


async def test_a_command_s_lines_and_exit_code_are_kept() -> None:
    outcome, lines = await _run(["sh", "-c", "read x; echo got $x; echo oops >&2; exit 4"])
    assert outcome.code == 4
    assert not outcome.ok([])
    assert outcome.ok([4])
    assert sorted(lines) == [("stderr", "oops"), ("stdout", "got in")]


async def test_a_background_child_does_not_hold_the_datum_and_a_timeout_kills_the_group() -> None:
    outcome, lines = await _run(["sh", "-c", "sleep 30 & echo started"])
    assert (outcome.code, lines) == (0, [("stdout", "started")])
    assert outcome.seconds < 5
    outcome, _ = await _run(["sh", "-c", "sleep 30; echo never"], timeout=0.5)
    assert outcome.code is None
    assert outcome.seconds < 5
