"""Which projections a starting service hands to replay helpers (`catch_up.to_help`), and how
many cores it may keep busy."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hw_events.catch_up import cores, cpu_quota, to_help


def backlogs(*sizes: int) -> list[Any]:
    return [SimpleNamespace(backlog=size, name=f"p{i}") for i, size in enumerate(sizes)]


def names(chosen: list[Any]) -> list[str]:
    return [p.name for p in chosen]


def test_the_longest_replay_stays_here_and_the_next_goes_to_a_helper() -> None:
    assert names(to_help(backlogs(400_000, 600_000), 100_000, cores=2)) == ["p0"]
    assert names(to_help(backlogs(600_000, 400_000), 100_000, cores=2)) == ["p1"]


def test_short_replays_are_not_worth_a_process() -> None:
    assert to_help(backlogs(600_000, 99_999), 100_000, cores=2) == []
    assert to_help(backlogs(5, 5), 100_000, cores=8) == []


def test_one_projection_or_one_core_or_turned_off_means_no_helper() -> None:
    assert to_help(backlogs(600_000), 100_000, cores=8) == []
    assert to_help(backlogs(600_000, 500_000), 100_000, cores=1) == []
    assert to_help(backlogs(600_000, 500_000), 0, cores=8) == []


@pytest.mark.parametrize(("cores", "expected"), [(2, ["p2"]), (3, ["p2", "p0"]), (8, ["p2", "p0", "p3"])])
def test_no_more_helpers_than_cores_beside_this_process_longest_first(
    cores: int, expected: list[str]
) -> None:
    chosen = to_help(backlogs(300_000, 900_000, 500_000, 200_000, 10), 100_000, cores=cores)
    assert names(chosen) == expected


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "400000 100000\n"}, 4.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({}, None),  # no cgroup to read
    ],
)
def test_the_cpu_quota_is_read_from_the_cgroup(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(tmp_path) == quota


def test_a_quota_of_one_and_a_half_cpus_leaves_no_core_for_a_helper(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores(tmp_path) == len(os.sched_getaffinity(0))
