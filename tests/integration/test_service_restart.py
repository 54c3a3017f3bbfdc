"""A real service process (fs) killed and restarted: it rebuilds its state from the log, loses
nothing, and does nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from hw_events import streams, subjects
from hw_events.bus import CommandClient, decode_reply
from hw_events.errors import ServiceUnavailable
from hw_events.fs import CreateRepo, DeleteRepo, ListRepos, RepoCreated, RepoInfo
from hw_events.health import Health
from hw_events.messages import Version, utcnow
from hw_events.service import Settings, serve
from hw_events.store import Append, EventStore, read_messages
from hw_fs.main import SPEC
from tests.infra import NatsServer


class ServiceProcess:
    """One Headwater service as its own OS process, as `hwctl up` runs it."""

    def __init__(self, name: str, nats: NatsServer, log: Path) -> None:
        self.name, self.nats, self.log = name, nats, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "HW_NATS_URL": self.nats.url, "HW_SNAPSHOT_EVERY": "50", "HW_LOG_LEVEL": "info"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"hw_{self.name}"], env=env, stdout=log, stderr=log
            )

    async def health(self, nc: Any) -> Health:
        reply = await nc.request(subjects.health_subject(self.name), b"", timeout=1)
        health = decode_reply(reply.data, Health)
        assert health is not None
        return health

    async def wait_ready(self, nc: Any, timeout: float = 30) -> Health:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                health = await self.health(nc)
                if health.ready:
                    return health
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
            assert asyncio.get_running_loop().time() < deadline, "service not ready in time"
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
async def fs(fresh_nats: NatsServer, tmp_path: Path) -> Any:
    service = ServiceProcess("fs", fresh_nats, tmp_path / "fs.log")
    service.start()
    yield service
    if service.proc and service.proc.poll() is None:
        service.kill()


@pytest.fixture
async def fresh_nc(fresh_nats: NatsServer) -> Any:
    client = await nats.connect(fresh_nats.url)
    yield client
    await client.close()


async def list_repos(client: CommandClient) -> list[RepoInfo]:
    return await client.request("fs", ListRepos(), list[RepoInfo]) or []


async def repo_created_events(nc: Any) -> Counter[str]:
    decoder = msgspec.json.Decoder(dict[str, Any])
    counts: Counter[str] = Counter()
    for msg in await read_messages(nc.jetstream(), subjects.FS_STREAM, subjects.FS_EVENTS):
        event = decoder.decode(msg.data)["event"]
        if event["type"] == "repo_created":
            counts[event["repo"]] += 1
    return counts


async def test_sigkill_and_restart_rebuilds_the_same_state(fs: ServiceProcess, fresh_nc: Any) -> None:
    await fs.wait_ready(fresh_nc)
    client = CommandClient(fresh_nc)
    for i in range(120):  # more than HW_SNAPSHOT_EVERY, so the restart uses a snapshot plus a tail
        await client.request("fs", CreateRepo(repo=f"repo-{i}", description=f"#{i}"), RepoInfo)
    for i in range(0, 120, 7):
        await client.request("fs", DeleteRepo(repo=f"repo-{i}"))
    before = await list_repos(client)
    health_before = await fs.health(fresh_nc)

    fs.kill()
    with pytest.raises(ServiceUnavailable):
        await client.request("fs", ListRepos(), timeout=0.5)
    fs.start()
    health_after = await fs.wait_ready(fresh_nc)

    assert await list_repos(client) == before
    assert len(before) == 120 - len(range(0, 120, 7))
    assert health_after.replay[0].applied == health_before.replay[0].applied
    assert 0 < health_after.replay[0].read < health_before.replay[0].applied  # snapshot + tail
    created = await client.request("fs", CreateRepo(repo="after-restart"), RepoInfo)
    assert created is not None
    assert created.name == "after-restart"


async def test_killed_in_the_middle_of_commands_loses_nothing_and_does_nothing_twice(
    fs: ServiceProcess, fresh_nc: Any
) -> None:
    await fs.wait_ready(fresh_nc)
    client = CommandClient(fresh_nc, timeout=2)
    commands = [CreateRepo(repo=f"burst-{i}") for i in range(300)]
    replies = 0

    async def send(command: CreateRepo) -> bool:
        nonlocal replies
        try:
            await client.request("fs", command, RepoInfo)
        except ServiceUnavailable:
            return False
        replies += 1
        if replies == 40:  # kill it right now, with the other commands in flight
            fs.kill()
        return True

    answered = [c for c, ok in zip(commands, await asyncio.gather(*map(send, commands)), strict=True) if ok]
    assert 40 <= len(answered) < len(commands)

    fs.start()
    await fs.wait_ready(fresh_nc)
    names = {r.name for r in await list_repos(client)}
    assert {c.repo for c in answered} <= names  # nothing that was acknowledged is lost

    # The client retries everything with the same command ids: each lands once, none fails.
    for command in commands:
        info = await client.request("fs", command, RepoInfo)
        assert info is not None
        assert info.name == command.repo
    counts = await repo_created_events(fresh_nc)
    assert set(counts) == {c.repo for c in commands}
    assert set(counts.values()) == {1}


async def test_the_same_command_sent_twice_lands_once(fs: ServiceProcess, fresh_nc: Any) -> None:
    await fs.wait_ready(fresh_nc)
    client = CommandClient(fresh_nc)
    command = CreateRepo(repo="twice", description="sent twice")
    first, second = await asyncio.gather(
        client.request("fs", command, RepoInfo), client.request("fs", command, RepoInfo)
    )
    third = await client.request("fs", command, RepoInfo)
    assert first == second == third
    assert (await repo_created_events(fresh_nc))["twice"] == 1


async def test_sigterm_stops_cleanly_and_the_restart_reads_nothing_again(
    fs: ServiceProcess, fresh_nc: Any
) -> None:
    await fs.wait_ready(fresh_nc)
    client = CommandClient(fresh_nc)
    for i in range(10):
        await client.request("fs", CreateRepo(repo=f"kept-{i}"), RepoInfo)
    assert fs.terminate() == 0
    assert '"event": "service_stopped"' in fs.log.read_text()

    fs.start()
    health = await fs.wait_ready(fresh_nc)
    assert health.replay[0].read == 0  # everything came from the snapshot saved on the way out
    assert len(await list_repos(client)) == 10


async def test_a_malformed_command_from_outside_is_refused_and_the_service_carries_on(
    fs: ServiceProcess, fresh_nc: Any
) -> None:
    await fs.wait_ready(fresh_nc)
    reply = await fresh_nc.request(subjects.command_subject("fs", "create_repo"), b'{"repo": 42}', timeout=2)
    assert msgspec.json.decode(reply.data)["error"]["kind"] == "user"
    assert "Expected `str`, got `int`" in msgspec.json.decode(reply.data)["error"]["message"]
    assert await CommandClient(fresh_nc).request("fs", CreateRepo(repo="fine"), RepoInfo) is not None


async def test_a_stop_during_a_long_replay_is_not_held_up_and_loses_nothing(
    fresh_nats: NatsServer, fresh_nc: Any
) -> None:
    await streams.ensure_streams(fresh_nc.jetstream())
    store, now, total = EventStore(fresh_nc), utcnow(), 30_000
    for first in range(0, total, 5000):
        await store.append_many(
            [
                Append(subjects.repo_events(f"r{i}"), [RepoCreated(repo=f"r{i}", created=now)], Version.new())
                for i in range(first, first + 5000)
            ]
        )
    stop = asyncio.Event()
    settings = Settings(nats_url=fresh_nats.url, snapshot_every=1_000_000)
    serving = asyncio.create_task(serve(SPEC, settings, stop=stop))
    while True:  # wait until it is visibly in the middle of its replay
        try:
            reply = await fresh_nc.request(subjects.health_subject("fs"), b"", timeout=1)
            progress = decode_reply(reply.data, Health)
        except nats.errors.NoRespondersError:
            progress = None
        if progress is not None and progress.replay[0].read > 0:
            break
        await asyncio.sleep(0.01)
    assert not progress.ready
    stop.set()
    await asyncio.wait_for(serving, 5)

    restarted = ServiceProcess("fs", fresh_nats, Path(fresh_nats.store_dir).parent / "fs.log")
    restarted.start()
    try:
        health = await restarted.wait_ready(fresh_nc)
        assert 0 < health.replay[0].read < total  # carried on from where the stopped one got to
        assert len(await list_repos(CommandClient(fresh_nc))) == total
    finally:
        restarted.kill()
