"""Who may reach a fleet's pods, and how many may be evicted at once: the fleet's
NetworkPolicy and PodDisruptionBudget.

Pure functions called by :func:`shoal.planning.children.desired_children`. The NetworkPolicy
selects every Ray pod of the fleet and allows, for ingress only:

- every port from the fleet's own pods (Ray's GCS, object manager, workers and Serve's
  proxies talk among themselves on many ports, some chosen at run time);
- Ray's dashboard (8265, whose job API runs arbitrary code) and the dashboard agent (52365)
  from the operator and from KubeRay's controller only, each from its own namespace (a peer
  whose namespace is not known is looked for in the fleet's namespace only, never in every
  namespace);
- the serving port (8000) from the clients ``spec.network.allowFrom`` names (default: every
  pod of the fleet's namespace) and the operator;
- the metrics port (8080) from ``spec.network.metricsFrom`` (default: the fleet's namespace).

Egress is not restricted (engines download weights from where their ``source`` says).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.api.v1alpha1 import ModelFleet
from shoal.api.v1alpha1.fleet import NetworkPeer
from shoal.planning import names

#: Ray's ports that the NetworkPolicy names (KubeRay's defaults).
DASHBOARD_PORT = 8265
DASHBOARD_AGENT_PORT = 52365
METRICS_PORT = 8080

#: Labels KubeRay puts on the pods it creates: the node type tells workers from the head.
RAY_NODE_TYPE_LABEL = "ray.io/node-type"


@dataclass(frozen=True)
class Peers:
    """Where the operator and KubeRay's controller run, as NetworkPolicy peers see them."""

    #: Labels of the operator's pods (the chart's selector labels).
    operator_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "shoal"}
    )
    #: The operator's namespace; None: the fleet's own namespace (never any namespace).
    operator_namespace: str | None = None
    #: Labels of KubeRay's controller pods (its chart's).
    kuberay_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "kuberay-operator"}
    )
    #: KubeRay's namespace; None: the fleet's own namespace (never any namespace).
    kuberay_namespace: str | None = None


def _peer(pod_labels: dict[str, str], namespace: str | None) -> dict[str, Any]:
    """Pods with ``pod_labels`` in ``namespace``; None: in the fleet's namespace only (a peer
    without a namespaceSelector). An empty namespaceSelector, which would match every
    namespace, is never written."""
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(pod_labels)}}
    if namespace is not None:
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return peer


def _client(peer: NetworkPeer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = {"matchLabels": dict(peer.namespace_selector.match_labels)}
    if peer.pod_selector is not None:
        out["podSelector"] = {"matchLabels": dict(peer.pod_selector.match_labels)}
    return out


def _clients(peers: list[NetworkPeer]) -> list[dict[str, Any]]:
    """The fleet's clients; none named: every pod of its namespace."""
    return [_client(p) for p in peers] if peers else [{"podSelector": {}}]


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def desired_network_policy(
    fleet: ModelFleet, metadata: dict[str, Any], peers: Peers
) -> dict[str, Any]:
    """The fleet's NetworkPolicy (``metadata`` as every child of the fleet carries it)."""
    own = {"matchLabels": {names.FLEET_LABEL: fleet.metadata.name}}
    network = fleet.spec.network
    operator = _peer(peers.operator_pod_labels, peers.operator_namespace)
    kuberay = _peer(peers.kuberay_pod_labels, peers.kuberay_namespace)
    clients = [*_clients(network.allow_from), operator]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": own,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": own}]},
                {"from": [operator, kuberay], "ports": _tcp(DASHBOARD_PORT, DASHBOARD_AGENT_PORT)},
                {"from": clients, "ports": _tcp(names.SERVE_PORT)},
                {"from": _clients(network.metrics_from), "ports": _tcp(METRICS_PORT)},
            ],
        },
    }  # fmt: skip


def desired_pod_disruption_budget(fleet: ModelFleet, metadata: dict[str, Any]) -> dict[str, Any]:
    """At most one of the fleet's Ray workers evicted at a time (drains, upgrades): Ray Serve
    moves the replicas of an evicted worker before the next one goes."""
    workers = {names.FLEET_LABEL: fleet.metadata.name, RAY_NODE_TYPE_LABEL: "worker"}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": workers},
        },
    }  # fmt: skip
