"""hwctl create/update/list/inspect/delete/stop/start pipeline."""

from __future__ import annotations

import json
import sys

from hwctl import output
from hwctl.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

SCHEDULER = "scheduler"


def read_specs(source: str) -> list[dict[str, Any]]:
    """The spec documents in a file, on stdin (`-`) or at an http(s) URL: YAML or JSON, one or
    several (YAML documents separated by `---`, or JSON objects one after another)."""
    from hw_events.errors import UserError

    if source == "-":
        text = sys.stdin.read()
    elif source.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(source, timeout=60) as reply:  # noqa: S310 - the user's URL
                text = reply.read().decode()
        except (urllib.error.URLError, OSError) as err:
            raise UserError(f"cannot read the pipeline spec at {source}: {err}") from None
    else:
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise UserError(f"cannot read the pipeline spec {source}: {err.strerror}") from None
    return parse_specs(text, source)


def parse_specs(text: str, source: str) -> list[dict[str, Any]]:
    import yaml

    from hw_events.errors import UserError

    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        documents = _json_objects(text, source)
    if not documents:
        raise UserError(f"{source} holds no pipeline spec")
    for document in documents:
        if not isinstance(document, dict):
            raise UserError(f"{source}: a pipeline spec is an object with pipeline, transform and input")
    return documents


def _json_objects(text: str, source: str) -> list[Any]:
    """JSON objects written one after another (pachctl accepts several specs in one file)."""
    from hw_events.errors import UserError

    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            break
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError as err:
            raise UserError(f"{source} is neither YAML nor JSON: {err}") from None
        found.append(value)
    return found


def _row(p: dict[str, Any]) -> list[Any]:
    state = p["state"] + (f" / {p['last_job']}" if p.get("last_job") else " / -")
    return [p["name"], p["version"], p["input"], output.relative_time(p["created"]), state, p["description"]]


def _print(pipelines: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        output.json_lines(pipelines)
    else:
        output.table(
            ["NAME", "VERSION", "INPUT", "CREATED", "STATE / LAST JOB", "DESCRIPTION"],
            [_row(p) for p in pipelines],
        )


def create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--file",
        required=True,
        metavar="SPEC",
        help="a JSON or YAML spec: a file, - for stdin, or a URL",
    )


def create(args: argparse.Namespace) -> int:
    return _submit(args.file, update=False, reprocess=False)


def update_args(p: argparse.ArgumentParser) -> None:
    create_args(p)
    p.add_argument(
        "--reprocess",
        action="store_true",
        help="run every datum again with the new code, not only new and failed ones",
    )


def update(args: argparse.Namespace) -> int:
    return _submit(args.file, update=True, reprocess=args.reprocess)


def _submit(source: str, *, update: bool, reprocess: bool) -> int:
    specs = read_specs(source)
    with Client.connect(timeout=60) as hw:
        for spec in specs:
            hw.request(
                SCHEDULER,
                "create_pipeline",
                {"spec": spec, "update": update, "reprocess": reprocess},
                retry=True,
            )
    return 0


def list_args(p: argparse.ArgumentParser) -> None:
    output.add_output_flag(p)


def list_(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        pipelines = hw.request(SCHEDULER, "list_pipelines")
    _print(pipelines, args.output)
    return 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline")
    output.add_output_flag(p)


def inspect(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        p = hw.request(SCHEDULER, "inspect_pipeline", {"pipeline": args.pipeline})
    if args.output == "json":
        output.json_lines([p])
        return 0
    transform = p["spec"]["transform"]
    output.pairs(
        [
            ("Name", p["name"]),
            ("Description", p.get("description")),
            ("Version", p["version"]),
            ("Created", output.relative_time(p["created"])),
            ("Updated", output.relative_time(p.get("updated")) if p.get("updated") else "-"),
            ("State", p["state"]),
            ("Last Job", f"{p['last_job']} ({p['last_job_id']})" if p.get("last_job") else "-"),
            ("Input", p["input"]),
            ("Output Branch", p["output_branch"]),
            ("Image", transform.get("image") or "ubuntu:20.04"),
            ("Command", " ".join(transform["cmd"])),
            ("Workers", max(1, p["spec"].get("parallelism_spec", {}).get("constant", 0))),
            ("Datum Tries", p["spec"].get("datum_tries", 3)),
        ]
    )
    return 0


def delete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline")
    p.add_argument("--keep-repo", action="store_true", help="keep the pipeline's output repo")


def delete(args: argparse.Namespace) -> int:
    with Client.connect(timeout=60) as hw:
        hw.request(
            SCHEDULER, "delete_pipeline", {"pipeline": args.pipeline, "keep_repo": args.keep_repo}, retry=True
        )
    return 0


def stop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline")


def stop(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        hw.request(SCHEDULER, "stop_pipeline", {"pipeline": args.pipeline}, retry=True)
    return 0


def start_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline")


def start(args: argparse.Namespace) -> int:
    with Client.connect() as hw:
        hw.request(SCHEDULER, "start_pipeline", {"pipeline": args.pipeline}, retry=True)
    return 0
