"""The fleet's NetworkPolicy (selectors and ports) and its workers' PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from tests.unit.planning.test_children import ART, fleet, policy

from shoal.planning import names
from shoal.planning.children import PlanSettings, desired_children
from shoal.planning.network import Peers

OWN = {"matchLabels": {names.FLEET_LABEL: "f"}}
# Namespaces not known: the fleet's own namespace only (no namespaceSelector), never every
# namespace (an empty namespaceSelector).
OPERATOR = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "shoal"}}}
KUBERAY = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}


def _rules(policy_obj: dict[str, Any]) -> dict[Any, list[dict[str, Any]]]:
    """Ingress rules by the ports they open (None: every port)."""
    out = {}
    for rule in policy_obj["spec"]["ingress"]:
        ports = tuple(p["port"] for p in rule.get("ports", [])) or None
        out[ports] = rule["from"]
    return out


def test_network_policy_guards_every_ray_pod_of_the_fleet() -> None:
    np = desired_children(fleet(), policy(), ART, PlanSettings()).network_policy
    assert np["apiVersion"] == "networking.k8s.io/v1" and np["kind"] == "NetworkPolicy"
    assert np["metadata"]["name"] == "f" and np["metadata"]["namespace"] == "ns"
    assert np["spec"]["podSelector"] == OWN
    assert np["spec"]["policyTypes"] == ["Ingress"]
    rules = _rules(np)
    assert sorted(rules, key=str) == sorted([None, (8265, 52365), (8000,), (8080,)], key=str)
    # Ray's internal ports: only the fleet's own pods.
    assert rules[None] == [{"podSelector": OWN}]
    # The dashboard and its job API: only the operator and KubeRay.
    assert rules[(8265, 52365)] == [OPERATOR, KUBERAY]
    # The endpoint: the fleet's namespace (no clients named) and the operator.
    assert rules[(8000,)] == [{"podSelector": {}}, OPERATOR]
    assert rules[(8080,)] == [{"podSelector": {}}]


def test_named_clients_replace_the_namespace_default() -> None:
    network = {
        "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "search"}}},
                      {"podSelector": {"matchLabels": {"app": "chat"}}}],
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
    }  # fmt: skip
    np = desired_children(fleet(network=network), policy(), ART, PlanSettings()).network_policy
    rules = _rules(np)
    assert rules[(8000,)] == [
        {"namespaceSelector": {"matchLabels": {"team": "search"}}},
        {"podSelector": {"matchLabels": {"app": "chat"}}},
        OPERATOR,
    ]
    assert rules[(8080,)] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }]  # fmt: skip


def test_operator_namespace_narrows_the_dashboard_peer() -> None:
    settings = PlanSettings(peers=Peers(operator_namespace="shoal-system", kuberay_namespace="ray"))
    rules = _rules(desired_children(fleet(), policy(), ART, settings).network_policy)
    operator, kuberay = rules[(8265, 52365)]
    assert operator["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "shoal-system"}
    }
    assert kuberay["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ray"}}


def test_disruption_budget_covers_the_workers_one_at_a_time() -> None:
    pdb = desired_children(fleet(), policy(), ART, PlanSettings()).disruption_budget
    assert pdb["apiVersion"] == "policy/v1" and pdb["metadata"]["name"] == "f-workers"
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {names.FLEET_LABEL: "f", "ray.io/node-type": "worker"}},
    }
    (owner,) = pdb["metadata"]["ownerReferences"]
    assert owner["kind"] == "ModelFleet"
