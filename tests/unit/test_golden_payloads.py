"""Every event and command type keeps decoding the payloads it was released with.

`tests/golden/events/<tag>.v<N>.json` holds a stored envelope of each event type as first released,
`tests/golden/commands/<tag>.v<N>.json` a command as an external system may send it (the `type`
and `id` fields may be left out: the subject names the command). When a type gains fields, its old
golden files must still decode, with the values they had; add a new `.v<N+1>` file beside them.
"""

from __future__ import annotations

import functools
import json
import operator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hw_events import fs, health, pps
from hw_events.messages import Command, Envelope, Event, tag_of

GOLDEN = Path(__file__).parent.parent / "golden"
EVENT_TYPES: tuple[type[Event], ...] = (*fs.EVENTS, *pps.EVENTS)
COMMAND_TYPES: tuple[type[Command], ...] = (*fs.COMMANDS, *pps.COMMANDS, health.CheckHealth)


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def headwater_types(base: type) -> set[type]:
    # Base classes (Query) live in hw_events.messages; concrete types in the schema modules.
    return {
        t
        for t in all_subclasses(base)
        if t.__module__.startswith("hw_events.") and t.__module__ != "hw_events.messages"
    }


def assert_contains(decoded: Any, golden: Any, path: str = "$") -> None:
    """Every value in the golden payload survives decoding (new fields may add more)."""
    if isinstance(golden, dict):
        assert isinstance(decoded, dict), path
        for key, value in golden.items():
            assert key in decoded, f"{path}.{key} was dropped"
            assert_contains(decoded[key], value, f"{path}.{key}")
    elif path.endswith(("time", "created")):
        assert msgspec.json.decode(json.dumps(golden), type=Any) == golden  # same timestamp text
    else:
        assert decoded == golden, f"{path}: {decoded!r} != {golden!r}"


def test_every_event_and_command_type_is_catalogued() -> None:
    assert headwater_types(Event) <= set(EVENT_TYPES)
    assert headwater_types(Command) <= set(COMMAND_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=tag_of)
def test_every_event_type_has_a_golden_payload(event_type: type[Event]) -> None:
    files = sorted((GOLDEN / "events").glob(f"{tag_of(event_type)}.v*.json"))
    assert files, f"add tests/golden/events/{tag_of(event_type)}.v1.json: a stored envelope of this type"


@pytest.mark.parametrize("path", sorted((GOLDEN / "events").glob("*.json")), ids=lambda p: p.name)
def test_golden_event_still_decodes(path: Path) -> None:
    union: Any = functools.reduce(operator.or_, EVENT_TYPES)
    raw = path.read_bytes()
    envelope = msgspec.json.decode(raw, type=Envelope[union])
    assert tag_of(type(envelope.event)) == path.name.split(".v")[0]
    golden = json.loads(raw)
    decoded = msgspec.to_builtins(envelope)
    for key in ("id", "aggregate", "version", "command", "trace"):
        assert decoded[key] == golden[key]
    event = {k: v for k, v in golden["event"].items() if k not in ("created",)}
    assert_contains(decoded["event"], event)


@pytest.mark.parametrize("command_type", COMMAND_TYPES, ids=tag_of)
def test_every_command_type_has_a_golden_payload(command_type: type[Command]) -> None:
    files = sorted((GOLDEN / "commands").glob(f"{tag_of(command_type)}.v*.json"))
    assert files, f"add tests/golden/commands/{tag_of(command_type)}.v1.json"
    for path in files:
        golden = json.loads(path.read_bytes())
        decoded = msgspec.to_builtins(msgspec.json.decode(path.read_bytes(), type=command_type))
        assert_contains(decoded, {k: v for k, v in golden.items() if k != "type"})
