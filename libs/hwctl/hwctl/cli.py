"""hwctl: Headwater's command line. Verbs, flags and `repo@branch:/path` mirror pachctl.

Start-up time matters (people call hwctl in loops), so this module imports only argparse and
builds the parser of the one command being run; each command's module is imported on demand,
and heavy libraries only by the commands that need them. Why argparse and not typer or click:
importing typer takes ~60 ms here and click ~25 ms, against ~10 ms for a bare interpreter.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

# (verb, noun) -> (module in hwctl.commands, function, one-line help). The function's parser is
# built by `<function>_args` in the same module.
COMMANDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    ("up",): ("runtime", "up", "Start Headwater on this machine: NATS and the five services"),
    ("down",): ("runtime", "down", "Stop the Headwater that `hwctl up` started (data stays)"),
    ("status",): ("runtime", "status", "Show each process, its pid, and how far it has replayed the log"),
    ("create", "repo"): ("repo", "create", "Create a new repo"),
    ("list", "repo"): ("repo", "list_", "List repos, newest first"),
    ("inspect", "repo"): ("repo", "inspect", "Show one repo"),
    ("delete", "repo"): ("repo", "delete", "Delete a repo"),
    ("create", "branch"): (
        "branch",
        "create",
        "Create a branch, point it at a commit (--head), or give it a trigger",
    ),
    ("list", "branch"): ("branch", "list_", "List a repo's branches, newest first"),
    ("inspect", "branch"): ("branch", "inspect", "Show one branch"),
    ("delete", "branch"): ("branch", "delete", "Delete a branch (its commits stay)"),
    ("start", "commit"): ("commit", "start", "Start a commit on a branch; prints its id"),
    ("finish", "commit"): ("commit", "finish", "Finish an open commit"),
    ("list", "commit"): ("commit", "list_", "List a repo's (or a branch's) commits, newest first"),
    ("inspect", "commit"): ("commit", "inspect", "Show one commit"),
    ("wait", "commit"): ("commit", "wait", "Wait until a commit is finished"),
    ("put", "file"): ("file", "put", "Put a file, a directory (-r), a URL or stdin (-) into a branch"),
    ("get", "file"): ("file", "get", "Write a file's bytes to stdout (or -o FILE)"),
    ("list", "file"): ("file", "list_", "List a directory of a commit"),
    ("glob", "file"): ("file", "glob", "List the files and directories matching a pattern (*, ?, **)"),
    ("diff", "file"): ("file", "diff", "Show what changed between two commits (default: against the parent)"),
    ("inspect", "file"): ("file", "inspect", "Show one file"),
    ("copy", "file"): ("file", "copy", "Copy files by reference, across branches and repos"),
    ("delete", "file"): ("file", "delete", "Delete a file or directory"),
    ("create", "pipeline"): (
        "pipeline",
        "create",
        "Create a pipeline from a JSON or YAML spec (-f FILE, -, URL)",
    ),
    ("update", "pipeline"): (
        "pipeline",
        "update",
        "Change a pipeline's spec; --reprocess runs every datum again",
    ),
    ("list", "pipeline"): ("pipeline", "list_", "List pipelines, newest first"),
    ("inspect", "pipeline"): ("pipeline", "inspect", "Show one pipeline"),
    ("delete", "pipeline"): ("pipeline", "delete", "Delete a pipeline (and its output repo)"),
    ("stop", "pipeline"): ("pipeline", "stop", "Start no new jobs of a pipeline until it is started"),
    ("start", "pipeline"): ("pipeline", "start", "Let a stopped pipeline run its jobs again"),
    ("list", "job"): ("job", "list_", "List jobs, newest first (-p PIPELINE, or PIPELINE@COMMIT)"),
    ("inspect", "job"): ("job", "inspect", "Show one job"),
    ("wait", "job"): ("job", "wait", "Wait until a job ends; exit 1 unless it succeeded"),
    ("list", "datum"): ("job", "datums", "List a job's datums and their state"),
    ("logs",): ("logs", "logs", "Show what user code printed (-p PIPELINE [-j JOB] [--datum D] [-f])"),
}

EXIT_USER = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: trying again later may work


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, minus its import of shutil (2 ms) just to learn the terminal width."""

    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size().columns - 2
        except OSError:
            width = 78
        super().__init__(prog, width=width)


def _usage() -> str:
    width = max(len(" ".join(k)) for k in COMMANDS)
    lines = [f"  {' '.join(k).ljust(width)}   {help_}" for k, (_, _, help_) in COMMANDS.items()]
    return (
        "usage: hwctl <command> [options]    (hwctl <command> -h for a command's options)\n\n"
        "Headwater: versioned data and data pipelines.\n\ncommands:\n" + "\n".join(lines) + "\n\n"
        "environment:\n"
        "  HW_HOME       where a local Headwater keeps its data, logs and pid files (default ~/.headwater)\n"
        "  HW_NATS_URL   talk to the Headwater on this NATS instead of the one HW_HOME records\n"
    )


def _find(argv: Sequence[str]) -> tuple[tuple[str, ...], int] | None:
    for n in (2, 1):
        key = tuple(argv[:n])
        if key in COMMANDS:
            return key, n
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0
    if args[0] == "--version":
        from hw_events import __version__

        print(f"hwctl {__version__}")
        return 0
    found = _find(args)
    if found is None:
        return _unknown(args)
    key, used = found
    module_name, function, help_ = COMMANDS[key]
    module = importlib.import_module(f"hwctl.commands.{module_name}")
    parser = argparse.ArgumentParser(
        prog="hwctl " + " ".join(key), description=help_, formatter_class=_HelpFormatter
    )
    getattr(module, f"{function.rstrip('_')}_args")(parser)
    options = parser.parse_args(args[used:])
    return _run(getattr(module, function), options)


def _run(command: object, options: argparse.Namespace) -> int:
    from hw_events.errors import HeadwaterError

    try:
        code = command(options)  # type: ignore[operator]
    except HeadwaterError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.kind == "user":
            return EXIT_USER
        if err.kind == "transient":
            return EXIT_TRANSIENT
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hwctl list repo | head`: the reader left, which is fine
        sys.stderr.close()
        return 0
    return int(code or 0)


def _unknown(args: list[str]) -> int:
    verbs = {k[0] for k in COMMANDS}
    if args[0] in verbs:
        nouns = sorted(k[1] for k in COMMANDS if k[0] == args[0] and len(k) > 1)
        what = f"hwctl {args[0]} {args[1]}" if len(args) > 1 else f"hwctl {args[0]}"
        print(f"error: {what}: unknown; `hwctl {args[0]}` takes one of: {', '.join(nouns)}", file=sys.stderr)
    else:
        import difflib

        close = difflib.get_close_matches(args[0], sorted(verbs), n=1)
        hint = f" (did you mean `hwctl {close[0]}`?)" if close else ""
        print(f"error: unknown command {args[0]!r}{hint}; `hwctl --help` lists them", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
