"""hwctl list/inspect/wait job and list datum."""

from __future__ import annotations

from hwctl import output, refs
from hwctl.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

SCHEDULER = "scheduler"
JSON_FIELDS = (
    "pipeline",
    "id",
    "state",
    "version",
    "created",
    "started",
    "finished",
    "reason",
    "data_processed",
    "data_skipped",
    "data_failed",
    "data_recovered",
    "data_total",
    "download_bytes",
    "upload_bytes",
    "restarts",
    "inputs",
)


def _duration(job: dict[str, Any]) -> str:
    from datetime import UTC, datetime

    if not job.get("started"):
        return "-"
    start = datetime.fromisoformat(job["started"])
    end = datetime.fromisoformat(job["finished"]) if job.get("finished") else datetime.now(UTC)
    seconds = (end - start).total_seconds()
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return f"{int(seconds)} second" + ("" if int(seconds) == 1 else "s")
    minutes = int(seconds // 60)
    return f"{minutes} minute" + ("" if minutes == 1 else "s")


def progress(job: dict[str, Any]) -> str:
    """`processed + skipped / total`, with `+ recovered` when some were (failed ones are not shown)."""
    done = f"{job['data_processed']} + {job['data_skipped']}"
    if job.get("data_recovered"):
        done += f" + {job['data_recovered']}"
    return f"{done} / {job['data_total']}"


def state_text(job: dict[str, Any]) -> str:
    if job["state"] == "success" and job["data_total"] and job["data_skipped"] == job["data_total"]:
        return "success: there were no datums to process"
    return f"{job['state']}: {job['reason']}" if job.get("reason") else job["state"]


def _row(job: dict[str, Any]) -> list[Any]:
    return [
        job["pipeline"],
        job["id"],
        output.relative_time(job.get("started") or job.get("created")),
        _duration(job),
        job.get("restarts", 0),
        progress(job),
        output.human_size(job.get("download_bytes", 0)),
        output.human_size(job.get("upload_bytes", 0)),
        state_text(job),
    ]


def _json(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job.get(k) for k in JSON_FIELDS}


def _print(jobs: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        output.json_lines(_json(j) for j in jobs)
    else:
        output.table(
            ["PIPELINE", "ID", "STARTED", "DURATION", "RESTART", "PROGRESS", "DL", "UL", "STATE"],
            [_row(j) for j in jobs],
        )


def list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "commit", nargs="?", metavar="PIPELINE@COMMIT", help="the jobs that read (or are) this commit"
    )
    p.add_argument("-p", "--pipeline", default="", help="only this pipeline's jobs")
    p.add_argument("-n", "--number", type=int, default=0, help="show at most this many")
    output.add_output_flag(p)


def list_(args: argparse.Namespace) -> int:
    fields = {"pipeline": args.pipeline, "limit": args.number}
    if args.commit:
        target = refs.parse(args.commit)
        fields.update(pipeline=target.repo, input_commit=target.ref)
    with Client.connect() as hw:
        jobs = hw.request(SCHEDULER, "list_jobs", fields)
    _print(jobs, args.output)
    return 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="PIPELINE@JOB")
    output.add_output_flag(p)


def inspect(args: argparse.Namespace) -> int:
    target = refs.parse(args.job)
    with Client.connect() as hw:
        job = hw.request(SCHEDULER, "inspect_job", {"pipeline": target.repo, "job": target.ref})
    if args.output == "json":
        output.json_lines([_json(job)])
        return 0
    output.pairs(
        [
            ("ID", job["id"]),
            ("Pipeline", f"{job['pipeline']} (version {job['version']})"),
            ("Created", output.relative_time(job["created"])),
            ("Started", output.relative_time(job.get("started")) if job.get("started") else "-"),
            ("Duration", _duration(job)),
            ("State", job["state"]),
            ("Reason", job.get("reason")),
            ("Progress", progress(job)),
            ("Failed Datums", job["data_failed"]),
            ("Restarts", job.get("restarts", 0)),
            ("Downloaded", output.human_size(job.get("download_bytes", 0))),
            ("Uploaded", output.human_size(job.get("upload_bytes", 0))),
            ("Input", ", ".join(f"{i['name']}: {i['repo']}@{i['commit']}" for i in job["inputs"])),
            ("Output Commit", f"{job['pipeline']}@{job['id']}"),
        ]
    )
    return 0


def wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="PIPELINE@JOB")
    p.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (default: wait)")
    output.add_output_flag(p)


def wait(args: argparse.Namespace) -> int:
    """Wait until the job ends; exit 1 unless it succeeded."""
    target = refs.parse(args.job)
    with Client.connect() as hw:
        job = hw.wait_for(
            SCHEDULER,
            "wait_job",
            {"pipeline": target.repo, "job": target.ref},
            timeout=args.timeout,
            what=f"the end of job {args.job}",
        )
    _print([job], args.output)
    return 0 if job["state"] == "success" else 1


def datums_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="PIPELINE@JOB")
    output.add_output_flag(p)


def datums(args: argparse.Namespace) -> int:
    target = refs.parse(args.job)
    with Client.connect() as hw:
        found = hw.request(SCHEDULER, "list_datums", {"pipeline": target.repo, "job": target.ref})
    if args.output == "json":
        output.json_lines(found)
    else:
        output.table(
            ["ID", "FILES", "STATUS", "TIME"],
            [
                [d["id"], ", ".join(d["files"]), d["state"], f"{d['seconds']:.3f}s" if d["seconds"] else "-"]
                for d in found
            ],
        )
    return 0
