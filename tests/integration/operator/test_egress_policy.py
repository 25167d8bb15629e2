"""A fleet whose egress is Restricted, against the real API server: the operator resolves its
external models' (and LoRA store's) host names with the system's resolver and writes a NetworkPolicy the API
server accepts, which lets the fleet's pods reach each endpoint on its port only; a name that
does not resolve gets no rule, and the model's status says so; egress Open again takes the
rules away."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.operator.config import OperatorConfig
from shoal.operator.egress import UNRESOLVED
from shoal.operator.fleets import reconcile_fleet
from shoal.operator.gateway import KubeGateway
from tests.integration.operator.conftest import Cluster, fleet, policy

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)
PRICE = {"inputPerMillion": "2.50", "outputPerMillion": "10.00"}


def _external(name: str, base_url: str) -> dict[str, Any]:
    return {"name": name, "engine": "openai", "tier": "frontier",
            "external": {"baseUrl": base_url, "model": "m", "price": PRICE}}  # fmt: skip


def _fleet(mode: str) -> dict[str, Any]:
    return fleet(
        tiers=[{"name": "small", "costPerReplicaHour": "0.50"},
               {"name": "frontier", "costPerReplicaHour": "0"}],
        models=[
            {"name": "alpha", "engine": "simulated", "tier": "small"},
            _external("local", "http://localhost:8443/v1"),  # resolved (the hosts file)
            _external("pool", "http://10.1.2.3:8000/v1"),  # an address
            _external("gone", "https://nowhere.invalid/v1"),  # never resolves
            # Its LoRA adapters load from an S3-compatible store on this host.
            {"name": "tuned", "engine": "vllm", "tier": "small", "source": "hf://org/tiny",
             "loraAdapters": [{"name": "legal"}],
             "loraStore": {"uri": "s3://adapters/tiny", "endpoint": "http://localhost:9100"}},
        ],
        network={"egress": {"mode": mode, "to": [{"cidr": "10.20.0.0/16", "ports": [9000]}]}},
    )  # fmt: skip


def _reconcile(cluster: Cluster) -> None:
    gw = KubeGateway(cluster.cp.api_client())
    reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)


def _states(cluster: Cluster) -> dict[str, str | None]:
    models = ((cluster.get("fleet", "f") or {}).get("status") or {}).get("models") or []
    return {m["name"]: m.get("state") for m in models}


def test_restricted_egress_reaches_each_endpoint_on_its_port_only(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    cluster.apply(policy(strategy="static", staticOrder=["alpha", "local"], calibration=None))
    cluster.apply(_fleet("Restricted"))
    _reconcile(cluster)
    np = cluster.get("networkpolicy", "f")
    assert np is not None, "the API server did not accept the NetworkPolicy"
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    by_port = {
        tuple(p["port"] for p in r.get("ports", [])): [
            t.get("ipBlock", {}).get("cidr") for t in r.get("to", [])
        ]
        for r in np["spec"]["egress"]
    }
    assert "127.0.0.1/32" in by_port[(8443,)]  # localhost, as the resolver answered
    assert "127.0.0.1/32" in by_port[(9100,)]  # the LoRA store, on its port
    assert by_port[(8000,)] == ["10.1.2.3/32"]
    assert by_port[(9000,)] == ["10.20.0.0/16"]
    assert by_port[(53, 53)] == []  # DNS, anywhere
    assert (443,) not in by_port  # nowhere.invalid: no rule
    states = _states(cluster)
    assert states["gone"] == UNRESOLVED and states["local"] == "EXTERNAL", states
    # The Warning event (a log line where no kopf runs, as here) names the host.
    assert any(
        UNRESOLVED in r.getMessage() and "nowhere.invalid" in r.getMessage() for r in caplog.records
    ), caplog.text

    cluster.apply(_fleet("Open"))
    _reconcile(cluster)
    np = cluster.get("networkpolicy", "f")
    assert np is not None and np["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in np["spec"] or np["spec"]["egress"] == []
    assert _states(cluster)["gone"] == "EXTERNAL"
