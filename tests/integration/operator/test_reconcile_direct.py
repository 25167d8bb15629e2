"""Reconcilers called directly (no kopf loop) with a real gateway and API server: the paths
that the API server's own validation keeps a running operator from reaching easily."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import FleetBlocked, reconcile_fleet
from shoal.operator.gateway import KubeGateway
from tests.integration.operator.conftest import Cluster, fleet

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def test_unreadable_spec_is_reported_not_crashed_on(cluster: Cluster) -> None:
    cluster.apply(fleet())
    stored = cluster.get("fleet", "f")
    assert stored is not None
    broken = copy.deepcopy(stored)  # as if stored under an older, looser schema
    broken["spec"]["models"][0]["tier"] = "Not A Name"
    gw = KubeGateway(cluster.cp.api_client())
    with pytest.raises(FleetBlocked, match="invalid spec"):
        reconcile_fleet(gw, OperatorConfig(), broken, NOW)
    degraded = cluster.condition("fleet", "f", "Degraded")
    assert degraded is not None and degraded["status"] == "True"
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.models.0.tier" in degraded["message"]
    assert cluster.names("rayservice") == []


def test_missing_policy_when_called_directly(cluster: Cluster) -> None:
    cluster.apply(fleet(policy_name="nope"))
    gw = KubeGateway(cluster.cp.api_client())
    with pytest.raises(FleetBlocked, match="'nope' does not exist"):
        reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    ready = cluster.condition("fleet", "f", "Ready")
    assert ready is not None and ready["reason"] == "RoutingPolicyNotFound"
