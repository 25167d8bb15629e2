"""An external model's key reaches the fleet's pods only as its Secret's owner allows, against
the real API server: unmarked or for another host, the RayService mounts no key, the model's
status says why and a Warning event (or its log line outside kopf) tells it; marked for the
endpoint's host, the key is mounted as a file. The key itself appears nowhere: not in the
RayService (its serveConfigV2, env), the fleet's status or the events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.api.v1alpha1.external import MODEL_KEY_LABEL
from shoal.contract import MODEL_KEYS_DIR
from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import reconcile_fleet
from shoal.operator.gateway import KubeGateway
from shoal.operator.sources import ALLOWED_HOSTS_ANNOTATION
from tests.integration.operator.conftest import Cluster, fleet, policy

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)
KEY = "sk-frontier-3f9a1c7e"


def _secret(labels: dict[str, str], hosts: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "frontier-key", "labels": labels}
    if hosts is not None:
        meta["annotations"] = {ALLOWED_HOSTS_ANNOTATION: hosts}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"token": KEY}}


def _fleet() -> dict[str, Any]:
    return fleet(
        tiers=[{"name": "small", "costPerReplicaHour": "0.50"},
               {"name": "frontier", "costPerReplicaHour": "0"}],
        models=[
            {"name": "alpha", "engine": "simulated", "tier": "small"},
            {"name": "big", "engine": "openai", "tier": "frontier",
             "external": {"baseUrl": "https://api.example.com/v1", "model": "gpt-4o",
                          "apiKeySecretRef": {"name": "frontier-key", "key": "token"},
                          "price": {"inputPerMillion": "2.50", "outputPerMillion": "10.00"}}},
        ],
        savings={"referenceModel": "big"},
    )  # fmt: skip


def _reconcile(cluster: Cluster) -> None:
    gw = KubeGateway(cluster.cp.api_client())
    reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)


def _key_volumes(cluster: Cluster) -> list[dict[str, Any]]:
    rs = cluster.get("rayservice", "f")
    assert rs is not None
    spec = rs["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [v for p in pods for v in p["spec"].get("volumes", []) if v["name"] == "model-keys"]


def _state(cluster: Cluster) -> str | None:
    body = cluster.get("fleet", "f") or {}
    models = (body.get("status") or {}).get("models") or []
    return next((m.get("state") for m in models if m["name"] == "big"), None)


def _no_key_anywhere(cluster: Cluster) -> None:
    assert KEY not in json.dumps(cluster.get("rayservice", "f"))
    assert KEY not in json.dumps(cluster.get("fleet", "f"))
    events = cluster.cp.kubectl("get", "events", "-n", cluster.ns, "-o", "json").stdout
    assert KEY not in events


@pytest.mark.parametrize(
    ("labels", "hosts", "reason"),
    [
        ({}, "api.example.com", "ModelKeyNotMarked"),
        ({"shoal.dev/embedder-key": "true"}, "api.example.com", "ModelKeyNotMarked"),
        ({MODEL_KEY_LABEL: "true"}, "evil.example.net", "ModelKeyHostNotAllowed"),
        ({MODEL_KEY_LABEL: "true"}, None, "ModelKeyHostNotAllowed"),
    ],
)
def test_a_key_its_owner_did_not_grant_is_not_mounted(
    cluster: Cluster, labels: dict[str, str], hosts: str | None, reason: str
) -> None:
    cluster.apply(policy(strategy="static", staticOrder=["alpha", "big"], calibration=None))
    cluster.apply(_secret(labels, hosts), _fleet())
    _reconcile(cluster)
    assert _key_volumes(cluster) == []
    assert _state(cluster) == reason
    _no_key_anywhere(cluster)


def test_a_granted_key_is_mounted_as_a_file_and_withdrawn_with_the_grant(
    cluster: Cluster,
) -> None:
    cluster.apply(policy(strategy="static", staticOrder=["alpha", "big"], calibration=None))
    cluster.apply(_secret({MODEL_KEY_LABEL: "true"}, "other.example, api.example.com"), _fleet())
    _reconcile(cluster)
    (volume, *_) = _key_volumes(cluster)
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "frontier-key", "items": [{"key": "token", "path": "big"}]}}
    ]
    rs = cluster.get("rayservice", "f")
    assert rs is not None and MODEL_KEYS_DIR in json.dumps(rs)
    assert _state(cluster) == "EXTERNAL"
    status = (cluster.get("fleet", "f") or {})["status"]
    assert status["readyModels"].endswith("/2")
    _no_key_anywhere(cluster)
    # Its owner takes the host back: the key is no longer mounted.
    cluster.apply(_secret({MODEL_KEY_LABEL: "true"}, "other.example"))
    _reconcile(cluster)
    assert _key_volumes(cluster) == []
    assert _state(cluster) == "ModelKeyHostNotAllowed"
