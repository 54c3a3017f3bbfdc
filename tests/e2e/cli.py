"""Running `hwctl` as a user types it, from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HWCTL = str(Path(sys.executable).parent / "hwctl")


def hwctl(
    *args: str, check: bool = True, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [HWCTL, *args],
        capture_output=True,
        input=stdin.decode("latin-1") if stdin is not None else None,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"hwctl {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def hwctl_bytes(*args: str) -> bytes:
    result = subprocess.run([HWCTL, *args], capture_output=True, check=True, timeout=300)
    return result.stdout


def json_lines(*args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in hwctl(*args, "-o", "json").stdout.splitlines()]


def error_of(*args: str) -> tuple[int, str]:
    result = hwctl(*args, check=False)
    return result.returncode, result.stderr.strip()


def stored_events(nats_url: str, subject: str, stream: str = "HW_FS") -> list[dict[str, Any]]:
    """The envelopes stored on `subject` of `stream`, read by a process of its own (as a user would)."""
    script = (
        "import asyncio, nats, sys\n"
        "from hw_events.store import read_messages\n"
        "async def main():\n"
        "    nc = await nats.connect(sys.argv[1])\n"
        "    for m in await read_messages(nc.jetstream(), sys.argv[3], sys.argv[2]):\n"
        "        print(m.data.decode())\n"
        "    await nc.close()\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, nats_url, subject, stream], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in result.stdout.splitlines()]
