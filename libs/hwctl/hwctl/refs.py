"""`repo@ref:/path`: how hwctl names repos, commits and files, as pachctl does.

`ref` is a branch, a commit id, or ancestry (`master^2`, `master~1`, `master.1`); `path` may leave
out its leading `/`. The service checks that the names exist; this only splits the text.
"""

from __future__ import annotations

import re

from hw_events.errors import UserError

_SPEC = re.compile(r"^(?P<repo>[^@:]+)(?:@(?P<ref>[^:]*))?(?::(?P<path>.*))?$")


class Ref:
    __slots__ = ("path", "ref", "repo")

    def __init__(self, repo: str, ref: str, path: str) -> None:
        self.repo, self.ref, self.path = repo, ref, path

    def __str__(self) -> str:
        return self.repo + (f"@{self.ref}" if self.ref else "") + (f":{self.path}" if self.path else "")


def parse(text: str, *, ref: bool = True, path: bool = False, default_ref: str = "") -> Ref:
    """Split `repo@ref:/path`; `ref`/`path` say whether that part is required here."""
    match = _SPEC.match(text)
    shape = "repo@ref" + (":/path" if path else "")
    if match is None:
        raise UserError(f'invalid reference "{text}": use {shape}')
    found = Ref(match["repo"], match["ref"] or default_ref, match["path"] or "")
    if ref and not found.ref:
        raise UserError(f'"{text}" names no branch or commit: use {shape}')
    if path and match["path"] is None:
        raise UserError(f'"{text}" names no file: use {shape}')
    return found
