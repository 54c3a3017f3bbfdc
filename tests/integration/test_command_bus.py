"""The command bus against a real nats-server: replies, typed errors, queue groups, tracing."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import pytest
from opentelemetry import trace

from hw_events import subjects
from hw_events.bus import CommandClient, CommandServer, decode_reply
from hw_events.errors import InternalError, MalformedMessage, ServiceUnavailable, UserError
from tests.helpers import Dawdle, Deposit, Explode, Hoard, Receipt


def bank(name: str, balances: dict[str, int]) -> dict[type, Any]:
    async def deposit(cmd: Deposit) -> Receipt:
        if cmd.amount <= 0:
            raise UserError(f"deposit of {cmd.amount} refused: amounts must be positive")
        balances[cmd.account] = balances.get(cmd.account, 0) + cmd.amount
        return Receipt(account=cmd.account, balance=balances[cmd.account], handled_by=name)

    async def explode(_: Explode) -> None:
        raise KeyError("ledger")

    async def dawdle(cmd: Dawdle) -> None:
        await asyncio.sleep(cmd.seconds)

    async def hoard(_: Hoard) -> str:
        return "x" * (9 * 1024 * 1024)  # more than the 8 MB a NATS message may carry here

    return {Deposit: deposit, Explode: explode, Dawdle: dawdle, Hoard: hoard}


@pytest.fixture
async def bank_service(nc: Any, unique: str) -> Any:
    service = f"bank{unique}"
    server = CommandServer(nc, service, bank("one", {}))
    await server.start()
    yield service
    await server.stop()


async def test_a_command_gets_its_typed_result(nc: Any, bank_service: str) -> None:
    client = CommandClient(nc)
    receipt = await client.request(bank_service, Deposit(account="a", amount=5), Receipt)
    assert receipt == Receipt(account="a", balance=5, handled_by="one")


async def test_a_refused_command_is_a_user_error_naming_the_problem(nc: Any, bank_service: str) -> None:
    with pytest.raises(UserError) as refused:
        await CommandClient(nc).request(bank_service, Deposit(account="a", amount=-3), Receipt)
    assert refused.value.message == "deposit of -3 refused: amounts must be positive"
    assert refused.value.service == bank_service
    assert not refused.value.retryable


async def test_a_bug_in_a_handler_is_an_internal_error_and_the_service_carries_on(
    nc: Any, bank_service: str
) -> None:
    client = CommandClient(nc)
    with pytest.raises(InternalError, match=rf"the {bank_service} service failed on test_explode: KeyError"):
        await client.request(bank_service, Explode())
    assert (await client.request(bank_service, Deposit(account="b", amount=1), Receipt)) is not None


async def test_a_malformed_command_is_rejected_with_the_reason(nc: Any, bank_service: str) -> None:
    subject = subjects.command_subject(bank_service, "test_deposit")
    for payload, reason in [
        (b"{not json", "malformed test_deposit command"),
        (b'{"account": "a", "amount": "five"}', "Expected `int`, got `str` - at `$.amount`"),
        (b'{"amount": 5}', "missing required field `account`"),
    ]:
        reply = await nc.request(subject, payload, timeout=2)
        with pytest.raises(MalformedMessage, match=re.escape(reason)):
            decode_reply(reply.data, Receipt)
    receipt = await CommandClient(nc).request(bank_service, Deposit(account="c", amount=2), Receipt)
    assert receipt is not None
    assert receipt.balance == 2


async def test_an_unknown_command_lists_the_known_ones(nc: Any, bank_service: str) -> None:
    reply = await nc.request(subjects.command_subject(bank_service, "rob_bank"), b"{}", timeout=2)
    with pytest.raises(UserError, match=r"has no command 'rob_bank' .*test_deposit"):
        decode_reply(reply.data, None)


async def test_no_running_service_is_reported_at_once(nc: Any, unique: str) -> None:
    with pytest.raises(
        ServiceUnavailable, match=f"no nobody{unique} service is running to handle test_deposit"
    ):
        await CommandClient(nc).request(f"nobody{unique}", Deposit(account="a", amount=1), timeout=5)


async def test_a_service_that_does_not_answer_in_time_is_named(nc: Any, bank_service: str) -> None:
    with pytest.raises(
        ServiceUnavailable, match=f"the {bank_service} service did not answer test_dawdle within 0.3s"
    ):
        await CommandClient(nc).request(bank_service, Dawdle(seconds=2), timeout=0.3)


async def test_each_command_reaches_exactly_one_instance(nc: Any, unique: str) -> None:
    service = f"pair{unique}"
    balances: dict[str, int] = {}  # shared, so a command handled twice would show
    servers = [CommandServer(nc, service, bank(name, balances)) for name in ("one", "two")]
    for server in servers:
        await server.start()
    client = CommandClient(nc)
    receipts = await asyncio.gather(
        *(client.request(service, Deposit(account="x", amount=1), Receipt) for _ in range(40))
    )
    assert balances == {"x": 40}
    assert set(Counter(r.handled_by for r in receipts if r)) <= {"one", "two"}
    for server in servers:
        await server.stop()


async def test_slow_commands_do_not_hold_up_quick_ones(nc: Any, bank_service: str) -> None:
    client = CommandClient(nc)
    slow = asyncio.create_task(client.request(bank_service, Dawdle(seconds=1.5), timeout=5))
    await asyncio.sleep(0.05)
    receipt = await client.request(bank_service, Deposit(account="q", amount=1), Receipt, timeout=1)
    assert receipt is not None
    assert not slow.done()
    await slow


async def test_the_trace_continues_from_client_to_handler(nc: Any, unique: str, spans: Any) -> None:
    seen: list[int] = []

    async def deposit(_: Deposit) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    service = f"traced{unique}"
    server = CommandServer(nc, service, {Deposit: deposit})
    await server.start()
    with trace.get_tracer("test").start_as_current_span("user action") as root:
        await CommandClient(nc).request(service, Deposit(account="a", amount=1))
    await server.stop()
    assert seen == [root.get_span_context().trace_id]
    names = {s.name for s in spans.get_finished_spans() if s.context.trace_id == seen[0]}
    assert {"user action", f"send {service} test_deposit", f"{service} test_deposit"} <= names


async def test_a_reply_too_large_to_send_is_an_error_not_a_timeout(nc: Any, bank_service: str) -> None:
    with pytest.raises(InternalError, match="more than NATS carries in one message"):
        await CommandClient(nc).request(bank_service, Hoard(), str, timeout=5)
