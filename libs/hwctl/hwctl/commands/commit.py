"""hwctl start/finish/list/inspect/wait commit."""

from __future__ import annotations

from hwctl import output, refs
from hwctl.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

FIELDS = ("repo", "branch", "id", "parent", "origin", "started", "finished", "size_bytes", "description")


def _json(commit: dict[str, Any]) -> dict[str, Any]:
    return {k: commit.get(k) for k in FIELDS} | {"files": commit.get("files", 0)}


def _row(c: dict[str, Any]) -> list[Any]:
    finished = output.relative_time(c["finished"]) if c.get("finished") else "-"
    size = output.human_size(c["size_bytes"])
    return [
        c["repo"],
        c["branch"] or "-",
        c["id"],
        finished,
        size if c.get("finished") else f"≤ {size}",
        c["origin"],
        c.get("description", ""),
    ]


def _print(commits: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        output.json_lines(_json(c) for c in commits)
    else:
        output.table(
            ["REPO", "BRANCH", "COMMIT", "FINISHED", "SIZE", "ORIGIN", "DESCRIPTION"],
            [_row(c) for c in commits],
        )


def start_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("branch", metavar="REPO@BRANCH")
    p.add_argument(
        "-m", "--message", "--description", dest="description", default="", help="what the commit holds"
    )


def start(args: argparse.Namespace) -> int:
    target = refs.parse(args.branch)
    with Client.connect() as hw:
        commit = hw.request(
            "fs",
            "start_commit",
            {"repo": target.repo, "branch": target.ref, "description": args.description},
            retry=True,
        )
    print(commit["id"])
    return 0


def finish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("commit", metavar="REPO@BRANCH_OR_COMMIT")
    p.add_argument(
        "-m", "--message", "--description", dest="description", default=None, help="replace its description"
    )


def finish(args: argparse.Namespace) -> int:
    target = refs.parse(args.commit)
    with Client.connect(timeout=300) as hw:
        hw.request(
            "fs",
            "finish_commit",
            {"repo": target.repo, "ref": target.ref, "description": args.description},
            retry=True,
        )
    return 0


def list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo", metavar="REPO[@BRANCH]")
    p.add_argument("-n", "--number", type=int, default=0, help="show at most this many")
    output.add_output_flag(p)


def list_(args: argparse.Namespace) -> int:
    target = refs.parse(args.repo, ref=False)
    with Client.connect() as hw:
        commits = hw.request(
            "fs", "list_commits", {"repo": target.repo, "branch": target.ref, "limit": args.number}
        )
    _print(commits, args.output)
    return 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("commit", metavar="REPO@REF")
    output.add_output_flag(p)


def inspect(args: argparse.Namespace) -> int:
    target = refs.parse(args.commit)
    with Client.connect() as hw:
        commit = hw.request("fs", "inspect_commit", {"repo": target.repo, "ref": target.ref})
    if args.output == "json":
        output.json_lines([_json(commit)])
    else:
        output.pairs(
            [
                ("Commit", f"{commit['repo']}@{commit['id']}"),
                ("Original Branch", commit["branch"] or "-"),
                ("Parent", commit.get("parent") or "-"),
                ("Origin", commit["origin"]),
                ("Started", output.relative_time(commit["started"])),
                ("Finished", output.relative_time(commit["finished"]) if commit.get("finished") else "-"),
                ("Size", output.human_size(commit["size_bytes"])),
                ("Description", commit.get("description") or "-"),
            ]
        )
    return 0


def wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("commit", metavar="REPO@REF")
    p.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (default: wait)")
    output.add_output_flag(p)


def wait(args: argparse.Namespace) -> int:
    target = refs.parse(args.commit)
    with Client.connect() as hw:
        commit = hw.wait_for(
            "fs",
            "wait_commit",
            {"repo": target.repo, "ref": target.ref},
            timeout=args.timeout,
            what=f"the finish of {args.commit}",
        )
    _print([commit], args.output)
    return 0
