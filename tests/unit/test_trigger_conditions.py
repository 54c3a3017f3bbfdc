"""What trigger sizes and cron specs mean, and the errors for ones that mean nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_events.errors import UserError
from hw_events.trigger_conditions import Cron, parse_duration, parse_size

AT = datetime(2026, 11, 21, 10, 30, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1MB", 1_000_000),
        ("1mb", 1_000_000),
        ("1M", 1_000_000),
        ("1MiB", 1_048_576),
        ("1mib", 1_048_576),
        ("1.5MB", 1_500_000),
        ("1.5 GiB", 1_610_612_736),
        ("500", 500),
        ("500B", 500),
        ("2KB", 2000),
        ("2KiB", 2048),
        ("3GB", 3_000_000_000),
        (".5KB", 500),
        ("1TiB", 2**40),
        ("2.01KB", 2010),  # exact, not 2009.9999...
        ("4.06KB", 4060),
    ],
)
def test_sizes_mean_what_users_mean(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1 elephant", "", "MB", "-1MB", "1..5MB", "1 M B", "1MBB", "1e3"])
def test_a_size_that_means_nothing_is_refused_by_name(text: str) -> None:
    with pytest.raises(UserError, match=re.escape(f'invalid trigger size "{text}"')):
        parse_size(text)


@given(st.integers(min_value=0, max_value=10**12))
def test_a_plain_number_of_bytes_reads_back(n: int) -> None:
    assert parse_size(str(n)) == parse_size(f"{n}B") == n


@pytest.mark.parametrize(
    ("spec", "after"),
    [
        ("@every 2s", AT + timedelta(seconds=2)),
        ("@every 10m", AT + timedelta(minutes=10)),
        ("@every 1h30m", AT + timedelta(hours=1, minutes=30)),
        ("@every 1500ms", AT + timedelta(milliseconds=1500)),
        ("0 0 29 2 *", datetime(2028, 2, 29, tzinfo=UTC)),  # a leap day is rare, but comes
        ("@daily", datetime(2026, 11, 22, tzinfo=UTC)),
        ("@hourly", datetime(2026, 11, 21, 11, tzinfo=UTC)),
        ("*/5 * * * *", datetime(2026, 11, 21, 10, 35, tzinfo=UTC)),
        ("0 3 * * 1", datetime(2026, 11, 23, 3, tzinfo=UTC)),  # the next Monday, 03:00 UTC
    ],
)
def test_cron_specs_tick_when_expected(spec: str, after: datetime) -> None:
    cron = Cron(spec)
    assert cron.next_after(AT) == after
    assert cron.ticked_between(AT, after)
    assert not cron.ticked_between(AT, after - timedelta(milliseconds=1))


def test_never_never_ticks() -> None:
    assert Cron("@never").next_after(AT) is None
    assert not Cron("@never").ticked_between(AT, AT + timedelta(days=10_000))


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("@fortnightly", 'unknown descriptor "@fortnightly"'),
        ("61 * * * *", "out of range"),
        ("* * * *", "it has 4 fields, not 5"),
        ("0 * * * * *", "it has 6 fields, not 5"),
        ("@every", "unknown descriptor"),
        ("@every 10 minutes", "is not a duration"),
        ("@every 0s", "ticks must be at least 1s apart"),
        ("@every 1ns", "ticks must be at least 1s apart"),
        ("@every 999ms", "ticks must be at least 1s apart"),
        ("0 0 31 2 *", "it never ticks"),  # February 31st
        ("@every 70000000h", "it never ticks"),  # past the year 9999
        ("@every 99999999999999h", "longer than any calendar"),
        ("tomorrow", "it has 1 fields, not 5"),
    ],
)
def test_a_cron_spec_that_means_nothing_is_refused_with_why(spec: str, why: str) -> None:
    with pytest.raises(UserError, match=re.escape(f'invalid trigger cron spec "{spec}"')) as caught:
        Cron(spec)
    assert why in caught.value.message


def test_durations_read_like_go() -> None:
    assert parse_duration("1h2m3s") == timedelta(hours=1, minutes=2, seconds=3)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1h 2m")
