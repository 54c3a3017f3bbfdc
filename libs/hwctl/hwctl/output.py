"""How hwctl prints: aligned columns for people, one JSON object per line for programs."""

from __future__ import annotations

import json
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from datetime import datetime
    from typing import Any


def add_output_flag(parser: Any) -> None:
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="json: one object per line"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; missing values print as '-'."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *cells]
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def json_lines(objects: Iterable[Any]) -> None:
    sys.stdout.write("".join(json.dumps(o, separators=(",", ":")) + "\n" for o in objects))


def human_size(n: int) -> str:
    """Binary units, as pachctl prints sizes: 0B, 512B, 1.5KiB, 3MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            text = f"{size:.4g}" if unit != "B" else str(int(size))
            return f"{text}{unit}"
        size /= 1024
    return f"{n}B"  # pragma: no cover


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def relative_time(when: str | None, now: datetime | None = None) -> str:
    """'3 seconds ago', 'About an hour ago', ... (the wording pachctl uses); '-' when unknown."""
    if not when:
        return "-"
    from datetime import UTC, datetime

    then = datetime.fromisoformat(when)
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    if seconds < 1:
        text = "Less than a second"
    elif seconds < 60:
        text = _plural(seconds, "second")
    elif seconds < 120:
        text = "About a minute"
    elif seconds < 3600:
        text = _plural(seconds // 60, "minute")
    elif seconds < 7200:
        text = "About an hour"
    elif seconds < 48 * 3600:
        text = _plural(seconds // 3600, "hour")
    elif seconds < 14 * 86400:
        text = _plural(seconds // 86400, "day")
    elif seconds < 60 * 86400:
        text = _plural(seconds // (7 * 86400), "week")
    elif seconds < 730 * 86400:
        text = _plural(seconds // (30 * 86400), "month")
    else:
        text = _plural(seconds // (365 * 86400), "year")
    return f"{text} ago"


def pairs(rows: Sequence[tuple[str, Any]]) -> None:
    """`Name: value` lines, aligned, as `inspect` shows one thing."""
    width = max(len(k) for k, _ in rows) + 1
    sys.stdout.write("".join(f"{(k + ':').ljust(width)} {'-' if v in (None, '') else v}\n" for k, v in rows))


class _NoProgress:
    def __enter__(self) -> Callable[[int], None]:
        return lambda _: None

    def __exit__(self, *_: object) -> None:
        return None


class _Bar:
    """A rich progress bar on stderr (bytes done, rate, time left), for long uploads on a terminal."""

    def __init__(self, total: int | None, label: str) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> Callable[[int], None]:
        self._progress.start()
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *_: object) -> None:
        self._progress.stop()


def progress(total: int | None, *, label: str) -> _NoProgress | _Bar:
    """A context giving `advance(bytes)`: a bar when stderr is a terminal, silence otherwise."""
    return _Bar(total, label) if sys.stderr.isatty() else _NoProgress()
