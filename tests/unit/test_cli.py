"""hwctl's dispatch: help, unknown commands, and that every command is wired."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from hwctl import cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for key in cli.COMMANDS:
        assert " ".join(key) in out
    assert "HW_HOME" in out


@pytest.mark.parametrize("key", list(cli.COMMANDS), ids=" ".join)
def test_every_command_has_a_parser_and_a_function(key: tuple[str, ...]) -> None:
    module_name, function, _ = cli.COMMANDS[key]
    module = importlib.import_module(f"hwctl.commands.{module_name}")
    assert callable(getattr(module, function))
    assert callable(getattr(module, f"{function.rstrip('_')}_args"))


def test_an_unknown_command_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lsit", "repo"]) == cli.EXIT_USAGE
    assert "did you mean `hwctl list`" in capsys.readouterr().err


def test_a_verb_without_a_known_noun_lists_the_nouns(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create", "spaceship"]) == cli.EXIT_USAGE
    assert "`hwctl create` takes one of: branch, pipeline, repo" in capsys.readouterr().err


def test_bad_options_are_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["list", "repo", "-o", "xml"])
    assert exit_.value.code == 2


def test_talking_to_nothing_says_how_to_start_it(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HW_HOME", str(tmp_path))
    monkeypatch.delenv("HW_NATS_URL", raising=False)
    result = subprocess.run(
        [sys.executable, "-m", "hwctl.cli", "list", "repo"], capture_output=True, text=True, check=False
    )
    assert result.returncode == cli.EXIT_TRANSIENT
    assert f"Headwater is not running (HW_HOME={tmp_path}); start it with `hwctl up`" in result.stderr


HEAVY = (
    "asyncio",
    "nats",
    "msgspec",
    "structlog",
    "opentelemetry",
    "typing",
    "dataclasses",
    "subprocess",
    "blake3",
    "minio",
    "fastcdc",
)


def test_quick_commands_import_nothing_heavy() -> None:
    """`hwctl list repo` and `hwctl status` must stay cheap enough to call in a loop."""
    probe = (
        "import sys; import hwctl.cli, hwctl.commands.repo, hwctl.commands.runtime, hwctl.commands.branch, "
        "hwctl.commands.commit, hwctl.commands.file; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:])))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe, *HEAVY], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []


def test_put_file_without_f_reads_only_what_is_piped_in(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from hw_events.errors import UserError
    from hwctl.commands.file import _from_stdin

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    with pytest.raises(UserError, match="nothing to put: name a file with -f FILE, or pipe the data in"):
        _from_stdin("", "/file", recursive=False)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"piped")))
    path, _, size = _from_stdin("", "dir/file", recursive=False)
    assert (path, size) == ("/dir/file", -1)
    with pytest.raises(UserError, match="-r puts a directory's files"):
        _from_stdin("-", "/file", recursive=True)
