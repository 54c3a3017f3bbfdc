"""The triggers service's firing loop against a real fs service, with news landing at the worst
moment: while a fire is on its way. The service runs in this process so the test can choose that
moment; fs runs as its own process, and everything goes through the real bus and log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from hw_events.bus import CommandClient
from hw_events.fs import (
    SERVICE,
    BranchInfo,
    CommitInfo,
    CreateBranch,
    CreateRepo,
    FinishCommit,
    FireTriggers,
    ListBranches,
    StartCommit,
    Trigger,
)
from hw_events.service import Settings, serve
from hw_triggers.handlers import Firing
from hw_triggers.main import SPEC
from tests.infra import NatsServer
from tests.integration.test_service_restart import ServiceProcess


@pytest.fixture
async def client(
    fresh_nats: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    monkeypatch.setenv("HW_STORAGE", "local")
    monkeypatch.setenv("HW_STORAGE_PATH", str(tmp_path / "data"))
    fs = ServiceProcess("fs", fresh_nats, tmp_path / "fs.log")
    fs.start()
    nc = await nats.connect(fresh_nats.url)
    await fs.wait_ready(nc)
    yield CommandClient(nc)
    await nc.close()
    fs.kill()


async def commit(client: CommandClient, branch: str) -> str:
    """An empty commit on `branch` (start and finish): news for its followers."""
    started = await client.request(SERVICE, StartCommit(repo="data", branch=branch), CommitInfo)
    await client.request(SERVICE, FinishCommit(repo="data", ref=branch))
    assert started is not None
    return started.id


async def heads(client: CommandClient) -> dict[str, str]:
    return {
        b.name: b.head
        for b in await client.request(SERVICE, ListBranches(repo="data"), list[BranchInfo]) or []
    }


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout:g}s"
        await asyncio.sleep(0.02)


async def run_triggers(nats_url: str, scenario: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    service = asyncio.create_task(serve(SPEC, Settings(nats_url=nats_url), stop=stop))
    try:
        await scenario()
    finally:
        stop.set()
        await service


async def setup_pairs(client: CommandClient, pairs: dict[str, str]) -> None:
    await client.request(SERVICE, CreateRepo(repo="data"))
    for source, follower in pairs.items():
        await client.request(SERVICE, CreateBranch(repo="data", branch=source))
        trigger = Trigger(branch=source, commits=1)
        await client.request(SERVICE, CreateBranch(repo="data", branch=follower, trigger=trigger))


async def test_news_landing_while_a_fire_is_on_its_way_is_judged_at_once(
    client: CommandClient, fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_pairs(client, {"staging": "master", "dev": "qa"})
    fire = Firing.fire
    landed: list[str] = []

    async def fire_with_news_meanwhile(self: Firing, repo: str, names: list[str], now: Any) -> bool:
        if not landed and names == ["master"]:
            landed.append(await commit(client, "dev"))  # the last news on dev, mid-flight
        return await fire(self, repo, names, now)

    monkeypatch.setattr(Firing, "fire", fire_with_news_meanwhile)

    async def scenario() -> None:
        await asyncio.sleep(0.3)  # ready
        head = await commit(client, "staging")
        await eventually(lambda: _at(client, "master", head), "master follows staging")
        await eventually(lambda: _at(client, "qa", landed[0]), "qa follows dev's commit that came mid-flight")

    await run_triggers(fresh_nats.url, scenario)


async def test_a_fire_overtaken_by_a_newer_commit_is_refused_and_judged_again(
    client: CommandClient, fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_pairs(client, {"staging": "master"})
    request = CommandClient.request
    overtaken: list[str] = []

    async def newer_commit_first(
        self: CommandClient, service: str, command: Any, *args: Any, **kw: Any
    ) -> Any:
        if isinstance(command, FireTriggers) and not overtaken:
            overtaken.append(await commit(client, "staging"))  # staging moves on before the fire lands
        return await request(self, service, command, *args, **kw)

    monkeypatch.setattr(CommandClient, "request", newer_commit_first)

    async def scenario() -> None:
        await asyncio.sleep(0.3)
        await commit(client, "staging")
        await eventually(
            lambda: _at(client, "master", overtaken[0] if overtaken else ""), "master reaches the newest"
        )

    await run_triggers(fresh_nats.url, scenario)


async def _at(client: CommandClient, branch: str, head: str) -> bool:
    return bool(head) and (await heads(client)).get(branch) == head
