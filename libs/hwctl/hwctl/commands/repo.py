"""hwctl create/list/inspect/delete repo."""

from __future__ import annotations

from hwctl import output
from hwctl.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def _repo_row(repo: dict[str, Any]) -> list[Any]:
    return [
        repo["name"],
        output.relative_time(repo.get("created")),
        output.human_size(repo.get("size_bytes", 0)),
        repo.get("description", ""),
    ]


def create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo", help="name: letters, digits, '_' and '-'")
    p.add_argument("-d", "--description", default="", help="what the repo holds")


def create(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        hw.request("fs", "create_repo", {"repo": args.repo, "description": args.description}, retry=True)
    return 0


def list_args(p: argparse.ArgumentParser) -> None:
    output.add_output_flag(p)


def list_(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        repos = hw.request("fs", "list_repos")
    if args.output == "json":
        output.json_lines(repos)
    else:
        output.table(["NAME", "CREATED", "SIZE (MASTER)", "DESCRIPTION"], [_repo_row(r) for r in repos])
    return 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    output.add_output_flag(p)


def inspect(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        repo = hw.request("fs", "inspect_repo", {"repo": args.repo})
    if args.output == "json":
        output.json_lines([repo])
    else:
        name, created, size, description = _repo_row(repo)
        output.pairs(
            [
                ("Name", name),
                ("Description", description),
                ("Created", created),
                ("Size of HEAD on master", size),
            ]
        )
    return 0


def delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("-f", "--force", action="store_true", help="delete even if pipelines read it")


def delete(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        hw.request("fs", "delete_repo", {"repo": args.repo, "force": args.force}, retry=True)
    return 0
