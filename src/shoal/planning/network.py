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

Egress (``spec.network.egress``) is not restricted in mode Open (engines download weights
from where their ``source`` says). In mode Restricted the policy allows egress only

- to every port of the fleet's own pods, and to port 53 (DNS, UDP and TCP) anywhere;
- to each external model's endpoint, and each S3-compatible store its LoRA adapters are loaded
  from (``loraStore.endpoint``), on its port only, and only while a model names it: an IP
  address as an ``ipBlock`` /32 (/128), a host name as the ``ipBlock`` s of the addresses the
  operator resolved it to (``resolved``; re-resolved at every reconcile and resync, a host
  that does not resolve gets no rule and its models say so in their status), a Service of the
  cluster (``name.namespace.svc``) as its namespace's pods on every port (a Service's target
  port is not known here);
- to the destinations ``egress.to`` names.

A standard NetworkPolicy cannot name a host, so an endpoint whose addresses change between
two resolutions is unreachable until the next one; :func:`desired_fqdn_policy` renders the
same rules for Cilium's ``toFQDNs``, which follow the names themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.api.v1alpha1 import ModelFleet
from shoal.api.v1alpha1.fleet import EgressPeer, NetworkPeer
from shoal.planning import names
from shoal.planning.external import ExternalEndpoint, egress_endpoints

#: Ray's ports that the NetworkPolicy names (KubeRay's defaults).
DASHBOARD_PORT = 8265
DASHBOARD_AGENT_PORT = 52365
METRICS_PORT = 8080

DNS_PORT = 53

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


def _client(peer: NetworkPeer | EgressPeer) -> dict[str, Any]:
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


def _host_block(address: str) -> dict[str, Any]:
    ip = ipaddress.ip_address(address)
    return {"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}


def _endpoint_rule(
    endpoint: ExternalEndpoint, resolved: Mapping[str, tuple[str, ...]]
) -> dict[str, Any] | None:
    """The egress rule that lets the fleet reach one external endpoint (None: a name that
    did not resolve, so nothing)."""
    if endpoint.kind == "service":
        ns = endpoint.service_namespace
        return {"to": [_peer({}, ns) if ns else {"podSelector": {}}]}
    addresses = (endpoint.host,) if endpoint.kind == "address" else resolved.get(endpoint.host)
    if not addresses:
        return None
    ips = {ipaddress.ip_address(a) for a in addresses}
    blocks = [_host_block(str(a)) for a in sorted(ips, key=lambda a: (a.version, int(a)))]
    return {"to": blocks, "ports": _tcp(endpoint.port)}


def _destination(peer: EgressPeer) -> dict[str, Any]:
    to = {"ipBlock": {"cidr": peer.cidr}} if peer.cidr is not None else _client(peer)
    rule: dict[str, Any] = {"to": [to]}
    if peer.ports:
        rule["ports"] = _tcp(*peer.ports)
    return rule


def egress_rules(
    fleet: ModelFleet, resolved: Mapping[str, tuple[str, ...]]
) -> list[dict[str, Any]]:
    """The egress rules of a Restricted fleet (see the module docstring); ``resolved``: the
    addresses of each host name the external models name, as the operator resolved them."""
    own = {"matchLabels": {names.FLEET_LABEL: fleet.metadata.name}}
    dns = [{"protocol": proto, "port": DNS_PORT} for proto in ("UDP", "TCP")]
    rules: list[dict[str, Any]] = [{"to": [{"podSelector": own}]}, {"ports": dns}]
    for endpoint in egress_endpoints(fleet):
        rule = _endpoint_rule(endpoint, resolved)
        if rule is not None and rule not in rules:
            rules.append(rule)
    rules += [_destination(p) for p in fleet.spec.network.egress.to]
    return rules


def desired_network_policy(
    fleet: ModelFleet,
    metadata: dict[str, Any],
    peers: Peers,
    resolved: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """The fleet's NetworkPolicy (``metadata`` as every child of the fleet carries it);
    ``resolved``: the addresses of its external models' host names (Restricted egress)."""
    own = {"matchLabels": {names.FLEET_LABEL: fleet.metadata.name}}
    network = fleet.spec.network
    operator = _peer(peers.operator_pod_labels, peers.operator_namespace)
    kuberay = _peer(peers.kuberay_pod_labels, peers.kuberay_namespace)
    clients = [*_clients(network.allow_from), operator]
    spec: dict[str, Any] = {
        "podSelector": own,
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": own}]},
            {"from": [operator, kuberay], "ports": _tcp(DASHBOARD_PORT, DASHBOARD_AGENT_PORT)},
            {"from": clients, "ports": _tcp(names.SERVE_PORT)},
            {"from": _clients(network.metrics_from), "ports": _tcp(METRICS_PORT)},
        ],
    }  # fmt: skip
    if network.egress.mode == "Restricted":
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = egress_rules(fleet, resolved or {})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": spec,
    }


#: Cilium's policy kind, for clusters whose CNI is Cilium (``toFQDNs``).
CILIUM_API_VERSION = "cilium.io/v2"


def desired_fqdn_policy(fleet: ModelFleet, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The external endpoints and LoRA stores of a Restricted fleet as a CiliumNetworkPolicy
    that names their hosts (``toFQDNs``, each on its port), for clusters whose CNI is Cilium:
    Cilium learns the names' addresses from the pods' own DNS answers (hence the DNS rule
    through its proxy), so an endpoint whose addresses change stays reachable. Cilium adds its
    allows to the NetworkPolicy's. None: egress is Open, or no endpoint is a host name."""
    if fleet.spec.network.egress.mode != "Restricted":
        return None
    named = [e for e in egress_endpoints(fleet) if e.kind == "name"]
    if not named:
        return None
    own = {names.FLEET_LABEL: fleet.metadata.name}
    dns = [{"port": str(DNS_PORT), "protocol": p} for p in ("UDP", "TCP")]
    return {
        "apiVersion": CILIUM_API_VERSION,
        "kind": "CiliumNetworkPolicy",
        "metadata": metadata,
        "spec": {
            "endpointSelector": {"matchLabels": own},
            "egress": [
                {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                  "k8s:k8s-app": "kube-dns"}}],
                 "toPorts": [{"ports": dns, "rules": {"dns": [{"matchPattern": "*"}]}}]},
                *({"toFQDNs": [{"matchName": e.host}],
                   "toPorts": [{"ports": [{"port": str(e.port), "protocol": "TCP"}]}]}
                  for e in named),
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
