"""File paths inside a commit, and glob patterns over them.

Paths are absolute and normalised (`/dir/file`, no trailing slash; `/` is the root). `..`, `.`,
empty segments and NUL are refused with an error that names the path: a path never escapes the
commit nor means two things.
"""

from __future__ import annotations

import functools
import re

from hw_events.errors import UserError


def normalize(path: str) -> str:
    """`/a/b` for `a/b`, `/a/b/` and `/a/b`; a UserError naming the path if it is not acceptable."""
    if "\x00" in path:
        raise UserError(f"invalid path {path!r}: it contains a NUL byte")
    if path in ("", "/"):
        return "/"
    trimmed = path.strip("/")
    segments = trimmed.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            what = "empty segments" if segment == "" else f'"{segment}" segments'
            raise UserError(f'invalid path "{path}": {what} are not allowed')
    return "/" + trimmed


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def ancestors(path: str) -> list[str]:
    """`/a/b/c` -> [`/`, `/a`, `/a/b`]."""
    out = ["/"]
    parts = path.strip("/").split("/")[:-1]
    for i in range(len(parts)):
        out.append("/" + "/".join(parts[: i + 1]))
    return out if path != "/" else []


def under(directory: str, path: str) -> bool:
    """Whether `path` is strictly inside `directory`."""
    return path != directory and (directory == "/" or path.startswith(directory + "/"))


def join(directory: str, relative: str) -> str:
    return normalize(directory.rstrip("/") + "/" + relative.lstrip("/"))


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over paths: `*` and `?` stay within a segment, `**` crosses `/`, `[...]` a class."""
    if "\x00" in pattern:
        raise UserError(f"invalid glob {pattern!r}: it contains a NUL byte")
    pattern = "/" + pattern.lstrip("/") if pattern not in ("", "/") else "/"
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):  # zero or more directories: `**/*.csv` matches `/a.csv` too
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise UserError(f'invalid glob "{pattern}": "[" is never closed')
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"(?!/)[{body}]")  # a class never matches the separator
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    regex = "".join(out).rstrip("/") or "/"
    try:
        return re.compile(f"^{regex}$")
    except re.error as err:
        raise UserError(f'invalid glob "{pattern}": {err}') from None
