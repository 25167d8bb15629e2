"""The operator writes and deletes only what it owns: an object of a child's name that
someone else made is a condition on the fleet (or policy), never taken over or deleted.

Against the real API server (no garbage collector runs there: what is left is what the
operator left)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
import pytest

from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import delete_fleet_children, reconcile_fleet
from shoal.operator.gateway import KubeGateway
from shoal.operator.ownership import NameTaken
from shoal.operator.policies import reconcile_policy
from tests.integration.operator.conftest import Cluster, calibration_configmap, fleet, policy

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _static(cluster: Cluster) -> None:
    cluster.apply(policy(strategy="static", staticOrder=["alpha", "beta"], calibration=None))


def _theirs(kind: str, api_version: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "labels": {"owner": "someone-else"}}, "spec": spec}  # fmt: skip


SERVICE = _theirs("Service", "v1", "f", {"selector": {"app": "theirs"},
                                          "ports": [{"port": 1234}]})  # fmt: skip
PDB = _theirs("PodDisruptionBudget", "policy/v1", "f-workers",
              {"maxUnavailable": 3, "selector": {"matchLabels": {"app": "theirs"}}})  # fmt: skip


def test_a_taken_name_is_a_condition_not_a_takeover(cluster: Cluster) -> None:
    _static(cluster)
    cluster.apply(SERVICE, fleet())
    gw = KubeGateway(cluster.cp.api_client())
    with pytest.raises(NameTaken, match="Service 'f' exists"):
        reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    degraded = cluster.condition("fleet", "f", "Degraded")
    assert degraded is not None and (degraded["status"], degraded["reason"]) == (
        "True",
        "NameTaken",
    )
    svc = cluster.get("service", "f")
    assert svc is not None
    assert svc["spec"]["selector"] == {"app": "theirs"}
    assert [p["port"] for p in svc["spec"]["ports"]] == [1234]
    assert not svc["metadata"].get("ownerReferences")
    assert "shoal.dev/fleet" not in svc["metadata"]["labels"]

    # Its owner removes it: the fleet takes the name at its next reconcile.
    cluster.delete("service", "f")
    reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    mine = cluster.get("service", "f")
    assert mine is not None and mine["metadata"]["ownerReferences"][0]["kind"] == "ModelFleet"


def test_deleting_a_fleet_leaves_what_it_does_not_own(cluster: Cluster) -> None:
    _static(cluster)
    cluster.apply(fleet())
    gw = KubeGateway(cluster.cp.api_client())
    reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    assert cluster.get("poddisruptionbudget", "f-workers") is not None
    # Someone replaces the fleet's PodDisruptionBudget with one of their own.
    cluster.delete("poddisruptionbudget", "f-workers")
    cluster.apply(PDB)
    gone = delete_fleet_children(gw, cluster.get("fleet", "f"))
    assert "RayService/f" in gone and "Service/f" in gone
    assert "PodDisruptionBudget/f-workers" not in gone
    theirs = cluster.get("poddisruptionbudget", "f-workers")
    assert theirs is not None and theirs["metadata"]["labels"] == {"owner": "someone-else"}


def test_a_taken_artifact_name_is_a_policy_condition(cluster: Cluster) -> None:
    taken = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "p-router-artifact"}, "data": {"mine": "yes"}}  # fmt: skip
    cluster.apply(calibration_configmap(), taken, policy())
    gw = KubeGateway(cluster.cp.api_client())
    with pytest.raises(kopf.TemporaryError, match="not this policy's"):
        reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW)
    fitted = cluster.condition("rpol", "p", "Fitted")
    assert fitted is not None and fitted["reason"] == "NameTaken"
    cm = cluster.get("configmap", "p-router-artifact")
    assert cm is not None and cm["data"] == {"mine": "yes"} and "binaryData" not in cm
