"""Fixtures shared by all tiers. Servers are real (see tests/infra.py); each test isolates itself by
using fresh stream and subject names, or a NATS server of its own where names are fixed."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from hw_events import streams
from hw_events.streams import StreamKind, StreamSpec
from tests import infra


@pytest.fixture(scope="session")
def infra_mode() -> str:
    return infra.infra_mode()


@pytest.fixture(scope="session")
def nats_server(infra_mode: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.NatsServer]:
    """One NATS server for the session; tests keep apart by their own stream names."""
    with infra.nats_server(tmp_path_factory.mktemp("nats"), infra_mode) as server:
        yield server


@pytest.fixture
def fresh_nats(infra_mode: str, tmp_path: Path) -> Iterator[infra.NatsServer]:
    """A NATS server of this test's own, for code that uses Headwater's fixed stream names."""
    with infra.nats_server(tmp_path / "nats", infra_mode) as server:
        yield server


@pytest.fixture(scope="session")
def s3(infra_mode: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.S3Endpoint]:
    with infra.s3_server(tmp_path_factory.mktemp("s3"), infra_mode) as endpoint:
        yield endpoint


@pytest.fixture
async def nc(nats_server: infra.NatsServer) -> AsyncIterator[Any]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def unique() -> str:
    """A fresh token for names (streams, subjects, consumers) no other test uses."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def event_stream(nc: Any, unique: str) -> StreamSpec:
    """A fresh event stream configured like Headwater's, with subjects `t<unique>.>`."""
    spec = StreamSpec(f"T_{unique}", (f"t{unique}.>",), StreamKind.EVENTS)
    await streams.ensure_stream(nc.jetstream(), spec)
    return spec


@pytest.fixture
def hw_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty HW_HOME for this test; whatever `hwctl up` started there is stopped afterwards."""
    home = tmp_path / "hw"
    monkeypatch.setenv("HW_HOME", str(home))
    monkeypatch.delenv("HW_NATS_URL", raising=False)
    yield home
    from hwctl import local
    from hwctl.home import Home

    if home.exists():
        local.down(Home(str(home)), lambda _: None, timeout=5)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests are tiered by folder: tests/unit, tests/integration, tests/e2e."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))


os.environ.setdefault("HW_LOG_LEVEL", "warning")
# Nothing a test starts may write into the real ~/.headwater (tests that need one set their own).
os.environ["HW_HOME"] = tempfile.mkdtemp(prefix="hw-tests-home-")
atexit.register(shutil.rmtree, os.environ["HW_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def _span_exporter() -> Any:
    """Install an OpenTelemetry SDK once for the test process, keeping finished spans in memory."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(_span_exporter: Any) -> Any:
    _span_exporter.clear()
    return _span_exporter


@pytest.fixture(params=["local", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Any:
    """Each backend in turn: every test using this runs against local disk and against S3."""
    if request.param == "local":
        from hw_storage.local import LocalBlobStore

        return LocalBlobStore(str(tmp_path / "blobs"))
    from hw_storage.s3 import S3BlobStore

    endpoint = request.getfixturevalue("s3")
    return S3BlobStore(
        endpoint.endpoint,
        "hw-tests",  # one bucket (weed gives each bucket volumes of its own); a prefix per test
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
        prefix=unique,
    )
