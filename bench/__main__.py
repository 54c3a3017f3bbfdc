"""`make bench`: run every benchmark against real servers and print one table.

python -m bench [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench import cli, files, log, pipelines, replay, triggers
from bench.report import print_table, progress, write_json
from tests.infra import nats_server, s3_server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="hw-bench-nats-") as workdir,
        nats_server(Path(workdir)) as server,
    ):
        progress(f"nats-server at {server.url}")
        results.append(asyncio.run(log.replay(server.url, n=200_000 // scale, runs=3)))
        results.append(asyncio.run(log.appends(server.url, n=50_000 // scale, runs=3)))
        results.extend(asyncio.run(replay.restart(server.url, n=1_000_000 // scale, runs=3)))
    results.extend(cli.startup(runs=40 // scale if args.quick else 40))
    results.extend(triggers.latency(commits=100 // scale))
    results.extend(pipelines.run_all(quick=args.quick))
    with tempfile.TemporaryDirectory(prefix="hw-bench-s3-") as workdir, s3_server(Path(workdir)) as s3:
        results.extend(files.run_all(s3, quick=args.quick))
    print()
    print_table(results)
    if args.json:
        write_json(results, args.json)


if __name__ == "__main__":
    main()
