"""hwctl up / down / status: the embedded default on this machine."""

from __future__ import annotations

import sys

from hwctl import output
from hwctl.home import Home
from hwctl.status import status as status_rows

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from hwctl.home import Runtime
    from hwctl.status import ComponentStatus


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def up_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", metavar="URL", help="join this NATS server instead of starting one")
    p.add_argument("--nats-port", type=int, help="port for the NATS it starts (default: a free one)")
    p.add_argument("--monitor-port", type=int, help="port for NATS monitoring (default: a free one)")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the services (default 120)"
    )


def up(args: argparse.Namespace) -> int:
    from hwctl import local

    home = Home()
    options = local.UpOptions(
        nats_url=args.nats, nats_port=args.nats_port, monitor_port=args.monitor_port, timeout=args.timeout
    )
    runtime = local.up(home, options, _say)
    print(f"Headwater is running (HW_HOME={home.path})")
    _print_status(home, runtime, status_rows(runtime))
    return 0


def down_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to let each process stop before SIGKILL"
    )


def down(args: argparse.Namespace) -> int:
    from hwctl import local

    home = Home()
    if not local.down(home, _say, timeout=args.timeout):
        print(f"Headwater is not running (HW_HOME={home.path})")
    return 0


def status_args(p: argparse.ArgumentParser) -> None:
    output.add_output_flag(p)


def status(args: argparse.Namespace) -> int:
    home = Home()
    runtime = home.load()
    if runtime is None:
        print(f"Headwater is not running (HW_HOME={home.path}); start it with `hwctl up`", file=sys.stderr)
        return 1
    rows = status_rows(runtime)
    if args.output == "json":
        output.json_lines(r.to_json() for r in rows)
    else:
        _print_status(home, runtime, rows)
    healthy = all(r.state in ("running", "external", "ready") for r in rows)
    return 0 if healthy else 1


def _print_status(home: Home, runtime: Runtime, rows: list[ComponentStatus]) -> None:
    where = f"NATS {runtime.nats_url}" + (
        f" (monitoring {runtime.monitor_url})" if runtime.monitor_url else ""
    )
    print(f"{where}; data and logs in {home.path}")

    def replayed(row: ComponentStatus) -> str:
        parts = []
        for p in row.replay:
            left = f" ({p['pending']} left)" if p.get("pending") else ""
            parts.append(f"{p['stream']} {p['applied']}{left}")
        return ", ".join(parts)

    output.table(
        ["COMPONENT", "PID", "STATE", "REPLAYED"], [[r.name, r.pid or "", r.state, replayed(r)] for r in rows]
    )
