"""hwctl create/list/inspect/delete branch."""

from __future__ import annotations

from hwctl import output, refs
from hwctl.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def trigger_text(trigger: dict[str, Any] | None) -> str:
    if not trigger:
        return "-"
    parts = []
    if trigger.get("size"):
        parts.append(f"Size({trigger['size']})")
    if trigger.get("commits"):
        parts.append(f"Commits({trigger['commits']})")
    if trigger.get("cron"):
        parts.append(f"Cron({trigger['cron']})")
    if not parts and trigger.get("all"):
        parts.append("every commit")  # no condition, all of them: it follows each commit
    joined = (" and " if trigger.get("all") else " or ").join(parts)
    return f"{trigger.get('branch', '')} on {joined}" if joined else str(trigger.get("branch", ""))


def _json(branch: dict[str, Any]) -> dict[str, Any]:
    return {
        "repo": branch["repo"],
        "name": branch["name"],
        "head": branch["head"],
        "trigger": branch.get("trigger"),
        "provenance": branch.get("provenance", []),
        "created": branch.get("created"),
    }


def create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("branch", metavar="REPO@BRANCH")
    p.add_argument(
        "--head", default="", help="point the branch at this commit of the repo (branch, id or ancestry)"
    )
    p.add_argument(
        "-p",
        "--provenance",
        action="append",
        default=[],
        metavar="REPO@BRANCH",
        help="a branch this one follows",
    )
    trigger = p.add_argument_group(
        "triggers",
        "move this branch to another branch's head when a condition holds (any of them by default)",
    )
    trigger.add_argument("--trigger", default="", metavar="BRANCH", help="the branch (same repo) to follow")
    trigger.add_argument(
        "--trigger-size", default="", metavar="SIZE", help="when this much data is new, e.g. 1MB, 500KiB"
    )
    trigger.add_argument("--trigger-commits", type=int, default=0, metavar="N", help="when N commits are new")
    trigger.add_argument(
        "--trigger-cron",
        default="",
        metavar="SPEC",
        help='when a cron tick has passed: 5 fields, "@daily", "@hourly" or "@every 10m"',
    )
    trigger.add_argument(
        "--trigger-all", action="store_true", help="only when all the conditions hold, not any of them"
    )


def create(args: argparse.Namespace) -> int:
    target = refs.parse(args.branch)
    head = args.head
    if "@" in head:
        head_ref = refs.parse(head)
        if head_ref.repo != target.repo:
            from hw_events.errors import UserError

            raise UserError("branch and head commit must belong to the same repo")
        head = head_ref.ref
    fields: dict[str, Any] = {
        "repo": target.repo,
        "branch": target.ref,
        "head": head,
        "provenance": args.provenance,
    }
    conditions = (args.trigger_size, args.trigger_commits, args.trigger_cron, args.trigger_all)
    if args.trigger:
        fields["trigger"] = {
            "branch": args.trigger,
            "size": args.trigger_size,
            "commits": args.trigger_commits,
            "cron": args.trigger_cron,
            "all": args.trigger_all,
        }
    elif any(conditions):
        from hw_events.errors import UserError

        raise UserError(
            "--trigger-size, --trigger-commits, --trigger-cron and --trigger-all need --trigger BRANCH"
        )
    with Client.connect() as hw:
        hw.request("fs", "create_branch", fields, retry=True)
    return 0


def list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo", metavar="REPO")
    output.add_output_flag(p)


def list_(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        branches = hw.request("fs", "list_branches", {"repo": args.repo})
    if args.output == "json":
        output.json_lines(_json(b) for b in branches)
    else:
        output.table(
            ["BRANCH", "HEAD", "TRIGGER"],
            [[b["name"], b["head"], trigger_text(b.get("trigger"))] for b in branches],
        )
    return 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("branch", metavar="REPO@BRANCH")
    output.add_output_flag(p)


def inspect(args: argparse.Namespace) -> int:
    target = refs.parse(args.branch)
    with Client.connect() as hw:
        branch = hw.request("fs", "inspect_branch", {"repo": target.repo, "branch": target.ref})
    if args.output == "json":
        output.json_lines([_json(branch)])
    else:
        output.pairs(
            [
                ("Name", f"{branch['repo']}@{branch['name']}"),
                ("Head Commit", branch["head"]),
                ("Provenance", ", ".join(branch.get("provenance", [])) or "-"),
                ("Trigger", trigger_text(branch.get("trigger"))),
            ]
        )
    return 0


def delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("branch", metavar="REPO@BRANCH")
    p.add_argument("-f", "--force", action="store_true", help="delete even if other branches follow it")


def delete(args: argparse.Namespace) -> int:
    target = refs.parse(args.branch)
    with Client.connect() as hw:
        hw.request(
            "fs",
            "delete_branch",
            {"repo": target.repo, "branch": target.ref, "force": args.force},
            retry=True,
        )
    return 0
