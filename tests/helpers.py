"""Small event types for tests of the log machinery (not part of Headwater's schemas)."""

from __future__ import annotations

import dataclasses
import time

import msgspec

from hw_events.messages import Command, Event
from hw_events.projection import Projection


class Deposited(Event, frozen=True, kw_only=True, tag="test_deposited"):
    about = ("account",)

    account: str
    amount: int


class Withdrawn(Event, frozen=True, kw_only=True, tag="test_withdrawn"):
    account: str
    amount: int


class Renamed(Event, frozen=True, kw_only=True, tag="test_renamed"):
    """A type older readers do not know (added 'later')."""

    account: str
    name: str


class Balances(msgspec.Struct, kw_only=True):
    accounts: dict[str, int] = msgspec.field(default_factory=dict)
    applied: int = 0


def evolve(state: Balances, event: Deposited | Withdrawn) -> Balances:
    match event:
        case Deposited(account=account, amount=amount):
            state.accounts[account] = state.accounts.get(account, 0) + amount
        case Withdrawn(account=account, amount=amount):
            state.accounts[account] = state.accounts.get(account, 0) - amount
        case _:
            raise TypeError(type(event).__name__)
    state.applied += 1
    return state


def evolve_slowly(state: Balances, event: Deposited | Withdrawn) -> Balances:
    time.sleep(0.005)  # a replay long enough to be caught in the middle
    return evolve(state, event)


# Module-level, so a replay helper process can import them (they travel pickled, by reference).
BALANCES = Projection(
    name="balances",
    schema="balances-1",
    state_type=Balances,
    initial=Balances,
    evolve=evolve,
    event_types=(Deposited, Withdrawn),
)
SLOW_BALANCES = dataclasses.replace(BALANCES, name="slow-balances", evolve=evolve_slowly)


class Deposit(Command, frozen=True, kw_only=True, tag="test_deposit"):
    account: str
    amount: int


class Explode(Command, frozen=True, kw_only=True, tag="test_explode"):
    """A command whose handler has a bug."""


class Dawdle(Command, frozen=True, kw_only=True, tag="test_dawdle"):
    seconds: float


class Hoard(Command, frozen=True, kw_only=True, tag="test_hoard"):
    """A command whose reply is too big for one message."""


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    balance: int
    handled_by: str = ""
