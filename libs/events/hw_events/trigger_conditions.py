"""What a branch trigger's conditions mean: sizes with units, and cron schedules.

Both the file store (which refuses a trigger it cannot read) and the triggers service (which
evaluates them) read trigger specs through this module, so they cannot disagree on what
`1.5MB` or `@every 10m` means.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hw_events.errors import UserError

# Decimal units are what people mean by KB/MB/GB (and what disks and the network use); the binary
# ones are spelled out. A bare number is bytes; one-letter units are decimal, as in Pachyderm.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s?([A-Za-z]*)\s*$")

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go writes microseconds with the micro sign
    "μs": 1e-6,  # and with the Greek mu
    "ms": 1e-3,
    "s": 1,
    "m": 60,
    "h": 3600,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def parse_size(text: str) -> int:
    """Bytes in a size such as `1MB`, `1.5 GiB` or `500` (case-insensitive)."""
    match = _SIZE.match(text)
    unit = match[2].lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UserError(
            f'invalid trigger size "{text}": use a number and a unit such as 500KB, 1.5MB or 2GiB '
            "(KB, MB, GB are powers of 1000; KiB, MiB, GiB powers of 1024)"
        )
    return int(Decimal(match[1]) * _UNITS[unit])  # exact: 2.01KB is 2010 bytes, not 2009


SHORTEST_EVERY = timedelta(seconds=1)


def parse_duration(text: str) -> timedelta:
    """A Go-style duration (`10m`, `1h30m`, `2s`, `500ms`) as `@every` takes it."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f'"{text}" is not a duration like 2s, 10m or 1h30m')
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f'"{text}" is longer than any calendar') from None


def check_conditions(size: str, commits: int, cron: str) -> None:
    """A UserError if a trigger's size, commit count or cron spec means nothing."""
    if size:
        parse_size(size)
    if commits < 0:
        raise UserError(f"cannot trigger on a negative number of commits ({commits})")
    if cron:
        Cron(cron)


class Cron:
    """A schedule: 5-field cron (UTC), `@daily`-style descriptors, `@every <duration>` or `@never`."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        text = " ".join(spec.split())
        self._every: timedelta | None = None
        self._never = text == "@never"
        self._cron = ""
        try:
            if text.startswith("@every "):
                self._every = parse_duration(text.removeprefix("@every ").strip())
                if self._every < SHORTEST_EVERY:  # shorter would keep the service judging non-stop
                    raise ValueError(f"ticks must be at least {SHORTEST_EVERY.seconds}s apart")
            elif not self._never:
                self._check_cron(text)
                self._cron = text
            if not self._never and self.next_after(datetime.now(UTC)) is None:
                raise ValueError("it never ticks")  # e.g. February 31st; say @never if meant
        except ValueError as err:
            raise UserError(
                f'invalid trigger cron spec "{spec}": {err}; use 5 fields (minute hour day month '
                'weekday), a descriptor such as "@daily" or "@hourly", or "@every 10m"'
            ) from None

    @staticmethod
    def _check_cron(text: str) -> None:
        from croniter import croniter  # only where a cron spec is read: it pulls in dateutil

        if text.startswith("@"):
            if text not in _DESCRIPTORS:
                raise ValueError(f'unknown descriptor "{text}"')
        elif len(text.split()) != 5:
            raise ValueError(f"it has {len(text.split())} fields, not 5")
        if not croniter.is_valid(text):
            raise ValueError("a field is out of range or unreadable")

    def next_after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after `moment` (an aware datetime); None if there is none."""
        if self._never:
            return None
        if self._every is not None:
            try:
                return moment + self._every
            except OverflowError:  # past the year 9999
                return None
        from croniter import CroniterBadDateError, croniter

        try:
            return croniter(self._cron, moment).get_next(datetime)
        except CroniterBadDateError:  # no date matches (within the years it searches)
            return None

    def ticked_between(self, since: datetime, now: datetime) -> bool:
        """Whether at least one tick came after `since` and no later than `now`."""
        tick = self.next_after(since)
        return tick is not None and tick <= now
