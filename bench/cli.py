"""hwctl start-up: a quick command against a running instance vs a bare `python -c pass`."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Result, median_of, progress
from tests.e2e.cli import HWCTL


def _time_ms(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def startup(runs: int = 40) -> list[Result]:
    from bench.files import headwater

    with tempfile.TemporaryDirectory(prefix="hw-bench-") as workdir, headwater(Path(workdir)) as env:
        progress(f"timing hwctl start-up ({runs} runs each)...")
        commands = {"status": [HWCTL, "status"], "list repo": [HWCTL, "list", "repo"]}
        samples: dict[str, list[float]] = {name: [] for name in [*commands, "python"]}
        for argv in [*commands.values(), [sys.executable, "-c", "pass"]]:
            _time_ms(argv, env)  # warm the page cache
        for _ in range(runs):  # interleaved, so background load hits both sides alike
            samples["python"].append(_time_ms([sys.executable, "-c", "pass"], env))
            for name, argv in commands.items():
                samples[name].append(_time_ms(argv, env))
    baseline = median_of(samples["python"])
    return [
        Result(
            f"hwctl {name} (wall time)",
            median_of(samples[name]),
            baseline,
            "ms",
            "python -c pass",
            "<= 3.0",
            lambda r: r.ratio <= 3.0,
        )
        for name in commands
    ]
