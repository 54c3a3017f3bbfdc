"""One table for all benchmarks: metric, Headwater's figure, the baseline's, the ratio, the goal."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Result:
    metric: str
    headwater: float
    baseline: float
    unit: str  # e.g. "events/s", "MB/s", "files/s" (higher is better) or "ms", "s" (lower is better)
    baseline_name: str
    goal: str
    meets: Callable[[Result], bool]

    @property
    def ratio(self) -> float:
        """Headwater relative to the baseline: rates as hw/base, times as hw/base too."""
        return self.headwater / self.baseline

    def row(self) -> list[str]:
        def fmt(value: float) -> str:
            return f"{value:,.0f} {self.unit}" if value >= 100 else f"{value:,.2f} {self.unit}"

        verdict = "yes" if self.meets(self) else "NO"
        return [
            self.metric,
            fmt(self.headwater),
            f"{fmt(self.baseline)} ({self.baseline_name})",
            f"{self.ratio:.2f}",
            self.goal,
            verdict,
        ]


def median_of(samples: list[float]) -> float:
    return statistics.median(samples)


def print_table(results: list[Result]) -> None:
    headers = ["METRIC", "HEADWATER", "BASELINE (same run)", "RATIO", "GOAL", "MET"]
    rows = [headers, *(r.row() for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def write_json(results: list[Result], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            [{k: v for k, v in asdict(r).items() if k != "meets"} | {"ratio": r.ratio} for r in results],
            f,
            indent=2,
        )


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
