"""Reconcilers called directly (no kopf loop) with a real gateway and API server: the paths
that the API server's own validation keeps a running operator from reaching easily."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest

from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import FleetBlocked, reconcile_fleet
from shoal.operator.gateway import Forbidden, KubeGateway
from shoal.operator.policies import reconcile_policy
from tests.conftest import RESTRICTED_USER
from tests.integration.operator.conftest import (
    Cluster,
    calibration_configmap,
    fleet,
    policy,
)

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


def test_unknown_vllm_engine_arg_is_reported_by_name(cluster: Cluster) -> None:
    # The API server keeps engineArgs untyped (CEL cannot see its keys): it accepts the typo,
    # and the operator refuses the fleet before rendering anything, naming the key.
    vllm = {"name": "alpha", "engine": "vllm", "tier": "small", "source": "hf://org/m",
            "engineArgs": {"max_model_length": 4096}}  # fmt: skip
    cluster.apply(fleet(models=[vllm]))
    gw = KubeGateway(cluster.cp.api_client())
    with pytest.raises(FleetBlocked, match="invalid spec"):
        reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    degraded = cluster.condition("fleet", "f", "Degraded")
    assert degraded is not None and degraded["reason"] == "InvalidSpec"
    assert "engineArgs.max_model_length is not an engine argument" in degraded["message"]
    assert "did you mean max_model_len?" in degraded["message"]
    assert cluster.names("rayservice") == []


def test_missing_policy_when_called_directly(cluster: Cluster) -> None:
    cluster.apply(fleet(policy_name="nope"))
    gw = KubeGateway(cluster.cp.api_client())
    with pytest.raises(FleetBlocked, match="'nope' does not exist"):
        reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    ready = cluster.condition("fleet", "f", "Ready")
    assert ready is not None and ready["reason"] == "RoutingPolicyNotFound"


def restricted_gateway(cluster: Cluster, rules: list[dict[str, Any]]) -> KubeGateway:
    """A gateway authenticated as a user that holds only ``rules`` in the test namespace."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "restricted"}, "rules": rules}  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "restricted"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "restricted"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": RESTRICTED_USER}],
    }  # fmt: skip
    cluster.apply(role, binding)
    return KubeGateway(cluster.cp.api_client(RESTRICTED_USER))


READ_SHOAL = {"apiGroups": ["shoal.dev"], "resources": ["modelfleets", "routingpolicies"],
              "verbs": ["get", "list", "watch"]}  # fmt: skip
WRITE_STATUS = {"apiGroups": ["shoal.dev"],
                "resources": ["modelfleets/status", "routingpolicies/status"],
                "verbs": ["patch"]}  # fmt: skip


def test_forbidden_child_write_is_a_condition(cluster: Cluster) -> None:
    """RBAC that lacks RayService writes: Degraded names the object and the refusal."""
    cluster.apply(policy(strategy="static", staticOrder=["alpha"], calibration=None), fleet())
    configmaps = {"apiGroups": [""], "resources": ["configmaps", "services"],
                  "verbs": ["get", "list", "create", "patch", "delete"]}  # fmt: skip
    guards = {"apiGroups": ["networking.k8s.io", "policy"],
              "resources": ["networkpolicies", "poddisruptionbudgets"],
              "verbs": ["get", "create", "patch"]}  # fmt: skip
    gw = restricted_gateway(cluster, [READ_SHOAL, WRITE_STATUS, configmaps, guards])
    with pytest.raises(Forbidden):
        reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    degraded = cluster.condition("fleet", "f", "Degraded")
    assert degraded is not None and degraded["status"] == "True", degraded
    assert degraded["reason"] == "Forbidden"
    assert degraded["message"].startswith("cannot write RayService/f:"), degraded["message"]
    assert "rayservices" in degraded["message"]


def test_forbidden_artifact_write_is_a_condition(cluster: Cluster) -> None:
    """A fit whose artifact cannot be stored says so in Fitted and Ready, not only in logs."""
    cluster.apply(calibration_configmap(), policy())
    read_cm = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
    gw = restricted_gateway(cluster, [READ_SHOAL, WRITE_STATUS, read_cm])
    with pytest.raises(Forbidden):
        reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW)
    for type in ("Fitted", "Ready"):
        cond = cluster.condition("rpol", "p", type)
        assert cond is not None and cond["status"] == "False", cond
        assert cond["reason"] == "Forbidden"
        assert cond["message"].startswith("cannot store the router artifact:"), cond["message"]
    assert cluster.get("configmap", "p-router-artifact") is None


def _fit_fails(cluster: Cluster, embedder: dict[str, Any], error: str) -> dict[str, Any]:
    """Reconcile a policy with ``embedder``: the fit fails with ``error``; its Fitted
    condition."""
    cluster.apply(calibration_configmap(), policy(embedder=embedder))
    gw = KubeGateway(cluster.cp.api_client())
    with pytest.raises(kopf.PermanentError, match=error):
        reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW)
    fitted = cluster.condition("rpol", "p", "Fitted")
    assert fitted is not None
    return fitted


def test_missing_embedder_secret_is_a_condition(cluster: Cluster) -> None:
    embedder = {"type": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "m",
                "apiKeySecretRef": {"name": "embed", "key": "token"}}  # fmt: skip
    fitted = _fit_fails(cluster, embedder, "Secret 'embed' not found")
    assert fitted["status"] == "False"
    assert fitted["reason"] == "EmbedderSecretNotFound"


def test_unreachable_embedder_is_a_condition(cluster: Cluster) -> None:
    """An openai embedder whose endpoint refuses connections: Fitted=False says so."""
    embedder = {"type": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "m"}
    fitted = _fit_fails(cluster, embedder, "embeddings endpoint")
    assert fitted["reason"] == "EmbedderUnavailable"
    assert "http://127.0.0.1:9/v1/embeddings" in fitted["message"]
