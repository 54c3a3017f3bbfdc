"""How hwctl prints sizes, times and tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hwctl import output

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (512, "512B"), (1024, "1KiB"), (1536, "1.5KiB"), (1_048_576, "1MiB"), (5 * 1024**3, "5GiB")],
)
def test_sizes_are_binary_units(size: int, text: str) -> None:
    assert output.human_size(size) == text


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(milliseconds=300), "Less than a second ago"),
        (timedelta(seconds=1), "1 second ago"),
        (timedelta(seconds=42), "42 seconds ago"),
        (timedelta(seconds=90), "About a minute ago"),
        (timedelta(minutes=5), "5 minutes ago"),
        (timedelta(minutes=70), "About an hour ago"),
        (timedelta(hours=5), "5 hours ago"),
        (timedelta(days=3), "3 days ago"),
        (timedelta(days=21), "3 weeks ago"),
        (timedelta(days=100), "3 months ago"),
        (timedelta(days=800), "2 years ago"),
    ],
)
def test_times_are_relative(ago: timedelta, text: str) -> None:
    assert output.relative_time((NOW - ago).isoformat(), NOW) == text


def test_unknown_time_is_a_dash() -> None:
    assert output.relative_time(None) == "-"


def test_tables_align_columns_and_dash_missing_values(capsys: pytest.CaptureFixture[str]) -> None:
    output.table(["NAME", "SIZE", "DESCRIPTION"], [["images", "1KiB", ""], ["a", None, "text"]])
    assert capsys.readouterr().out.splitlines() == [
        "NAME     SIZE   DESCRIPTION",
        "images   1KiB   -",
        "a        -      text",
    ]


def test_json_output_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    output.json_lines([{"name": "a"}, {"name": "b"}])
    assert capsys.readouterr().out == '{"name":"a"}\n{"name":"b"}\n'


@pytest.mark.parametrize(
    ("trigger", "text"),
    [
        (None, "-"),
        ({"branch": "staging", "size": "1MB"}, "staging on Size(1MB)"),
        ({"branch": "staging", "commits": 3}, "staging on Commits(3)"),
        ({"branch": "staging", "cron": "@daily"}, "staging on Cron(@daily)"),
        (
            {"branch": "staging", "size": "1MB", "commits": 3, "cron": "@daily", "all": False},
            "staging on Size(1MB) or Commits(3) or Cron(@daily)",
        ),
        (
            {"branch": "staging", "size": "1MB", "commits": 3, "all": True},
            "staging on Size(1MB) and Commits(3)",
        ),
        ({"branch": "staging", "all": True}, "staging on every commit"),
    ],
)
def test_the_trigger_column_reads_like_pachctl(trigger: dict[str, object] | None, text: str) -> None:
    from hwctl.commands.branch import trigger_text

    assert trigger_text(trigger) == text
