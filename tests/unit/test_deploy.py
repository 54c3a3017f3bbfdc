"""The Kubernetes manifests in deploy/: valid against the API's schemas, and wired as the code expects."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hw_events.subjects import SERVICES

DEPLOY = Path(__file__).parents[2] / "deploy"


def resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return docs


@pytest.mark.parametrize("resource", resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}")
def test_manifests_are_valid_kubernetes(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, "1.30", strict=True)


def test_every_service_runs_its_own_module_against_the_nats_service() -> None:
    docs = resources()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    nats_service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "nats")
    assert 4222 in [p["port"] for p in nats_service["spec"]["ports"]]
    assert sorted(deployments) == sorted(f"headwater-{s}" for s in SERVICES)
    for service in SERVICES:
        [container] = deployments[f"headwater-{service}"]["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", f"hw_{service}"]
        assert importlib.util.find_spec(f"hw_{service}") is not None
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["HW_NATS_URL"] == "nats://nats:4222"


def test_nats_keeps_the_log_on_a_persistent_volume_with_jetstream() -> None:
    docs = resources()
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "nats-config")
    assert "jetstream" in config["data"]["nats.conf"]
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    mounts = statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "data", "mountPath": "/data"} in mounts
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
