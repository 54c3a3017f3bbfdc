"""hwctl logs: what user code printed, per datum, read from the `HW_LOGS` stream.

Lines are read one by one with JetStream's direct get (`next_by_subj`), which needs nothing but a
request per line: no consumer is made, and nothing heavier than hwctl's own NATS client is loaded.
"""

from __future__ import annotations

import json
import sys
import time

from hw_events import subjects
from hwctl import output
from hwctl.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

FOLLOW_POLL = 0.25  # seconds between looks for new lines with -f


def logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--pipeline", required=True, help="the pipeline whose logs to show")
    p.add_argument("-j", "--job", default="", help="only this job's")
    p.add_argument("--datum", default="", help="only this datum's")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines as they come")
    p.add_argument("--raw", action="store_true", help="print each line as stored (JSON)")
    p.add_argument(
        "--worker-messages", action="store_true", help="also show the worker's own messages about each datum"
    )
    output.add_output_flag(p)


def logs(args: argparse.Namespace) -> int:
    subject = subjects.log_subject(args.pipeline, args.job or "*", args.datum or "*")
    raw = args.raw or args.output == "json"
    with Client.connect() as hw:
        seq = 1
        while True:
            found = hw.next_message(subjects.LOGS_STREAM, subject, seq)
            if found is None:
                if not args.follow:
                    return 0
                time.sleep(FOLLOW_POLL)
                continue
            seq, line = found[0] + 1, json.loads(found[1])
            if not line.get("user", True) and not args.worker_messages and not raw:
                continue
            if raw:
                sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
            else:
                sys.stdout.write(line.get("message", "") + "\n")
            if args.follow:
                sys.stdout.flush()
