"""The fleet's NetworkPolicy when its egress is Restricted: its own pods, DNS, each external
model's endpoint on its port only (while a model names it), the destinations it lists; and
the same endpoints as Cilium ``toFQDNs``."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from tests.unit.planning.test_children import ART, fleet, policy

from shoal.planning import names
from shoal.planning.children import PlanSettings, desired_children
from shoal.planning.external import egress_endpoints, external_endpoints
from shoal.planning.network import desired_fqdn_policy

OWN = {"matchLabels": {names.FLEET_LABEL: "f"}}
DNS = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
PRICE = {"inputPerMillion": "2.5", "outputPerMillion": "10"}


def external(name: str, base_url: str) -> dict[str, Any]:
    return {"name": name, "tier": "cpu", "engine": "openai",
            "external": {"baseUrl": base_url, "model": "m", "price": PRICE}}  # fmt: skip


def hybrid(*models: dict[str, Any], mode: str = "Restricted", **egress: Any) -> Any:
    own = {"name": "tiny", "engine": "llamacpp", "source": "file:///m/tiny.gguf", "tier": "cpu"}
    return fleet(
        tiers=[{"name": "cpu", "costPerReplicaHour": "0.10"}],
        models=[own, *models],
        network={"egress": {"mode": mode, **egress}},
    )


def network_policy(f: Any, **addresses: tuple[str, ...]) -> dict[str, Any]:
    settings = PlanSettings(egress_addresses=dict(addresses))
    return desired_children(f, policy(), ART, settings).network_policy


def test_open_egress_is_not_restricted_even_with_external_models() -> None:
    np = network_policy(hybrid(external("big", "https://api.example.com/v1"), mode="Open"))
    assert np["spec"]["policyTypes"] == ["Ingress"] and "egress" not in np["spec"]


def test_restricted_egress_reaches_the_named_hosts_addresses_on_their_port_only() -> None:
    f = hybrid(
        external("big", "https://api.example.com/v1"),
        external("big2", "https://api.example.com/v2"),  # same host and port: one rule
        external("pool", "http://10.1.2.3:8000/v1"),
    )
    np = network_policy(f, **{"api.example.com": ("203.0.113.9", "2001:db8::1", "203.0.113.8")})
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["egress"] == [
        {"to": [{"podSelector": OWN}]},  # Ray among the fleet's own pods
        DNS,
        {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"protocol": "TCP", "port": 8000}]},
        {"to": [{"ipBlock": {"cidr": "203.0.113.8/32"}}, {"ipBlock": {"cidr": "203.0.113.9/32"}},
                {"ipBlock": {"cidr": "2001:db8::1/128"}}],
         "ports": [{"protocol": "TCP", "port": 443}]},
    ]  # fmt: skip


def test_a_host_that_did_not_resolve_gets_no_rule_and_no_model_no_host() -> None:
    np = network_policy(hybrid(external("big", "https://api.example.com/v1")))
    assert np["spec"]["egress"] == [{"to": [{"podSelector": OWN}]}, DNS]
    # Without an external model nothing beyond the fleet and DNS is reachable.
    assert network_policy(hybrid())["spec"]["egress"] == [{"to": [{"podSelector": OWN}]}, DNS]


def test_a_service_of_the_cluster_is_its_namespaces_pods() -> None:
    f = hybrid(
        external("pool", "http://big-pool.llm.svc.cluster.local:8000/v1"),
        external("here", "http://big-pool:8000/v1"),
    )
    egress = network_policy(f)["spec"]["egress"]
    assert {"to": [{"podSelector": {}}]} in egress  # a bare name: the fleet's namespace
    llm = {"podSelector": {"matchLabels": {}},
           "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "llm"}}}  # fmt: skip
    assert {"to": [llm]} in egress
    kinds = {(e.host, e.kind) for e in external_endpoints(f)}
    assert kinds == {("big-pool", "service"), ("big-pool.llm.svc.cluster.local", "service")}


def test_listed_destinations_are_added() -> None:
    to = [{"cidr": "10.20.0.0/16", "ports": [443, 9000]},
          {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}]  # fmt: skip
    egress = network_policy(hybrid(to=to))["spec"]["egress"]
    assert egress[2:] == [
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
         "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 9000}]},
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}]},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("peer", "words"),
    [
        ({}, "either a cidr or namespaceSelector"),
        ({"cidr": "10.0.0.0/8", "podSelector": {"matchLabels": {"a": "b"}}}, "either a cidr"),
        ({"cidr": "10.0.0.300/8"}, "cidr must be an IP block"),
        ({"cidr": "10.0.0.1"}, "cidr must be an IP block"),
        ({"cidr": "10.0.0.0/8", "ports": [0]}, "greater than or equal to 1"),
    ],
)
def test_a_bad_destination_is_refused(peer: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        hybrid(to=[peer])


def test_fqdn_policy_names_each_host_on_its_port() -> None:
    f = hybrid(
        external("big", "https://api.example.com/v1"),
        external("pool", "http://10.1.2.3:8000/v1"),  # an address: the NetworkPolicy's
    )
    cnp = desired_fqdn_policy(f, {"name": "f", "namespace": "ns"})
    assert cnp is not None and cnp["kind"] == "CiliumNetworkPolicy"
    assert cnp["spec"]["endpointSelector"] == OWN
    dns, api = cnp["spec"]["egress"]
    assert dns["toPorts"][0]["rules"] == {"dns": [{"matchPattern": "*"}]}
    assert api == {"toFQDNs": [{"matchName": "api.example.com"}],
                   "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}  # fmt: skip
    assert (
        desired_fqdn_policy(hybrid(external("big", "https://a.example/v1"), mode="Open"), {})
        is None
    )


def test_the_cilium_policy_is_a_child_only_where_the_operator_writes_them() -> None:
    f = hybrid(external("big", "https://api.example.com/v1"))
    plain = desired_children(f, policy(), ART, PlanSettings()).objects()
    assert "CiliumNetworkPolicy" not in [o["kind"] for o in plain]
    objects = desired_children(f, policy(), ART, PlanSettings(cilium_fqdn_policy=True)).objects()
    kinds = [o["kind"] for o in objects]
    assert (
        kinds.index("NetworkPolicy")
        < kinds.index("CiliumNetworkPolicy")
        < kinds.index("RayService")
    )
    cnp = objects[kinds.index("CiliumNetworkPolicy")]
    assert cnp["metadata"]["name"] == "f" and cnp["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def lora_model(name: str, endpoint: str | None) -> dict[str, Any]:
    store: dict[str, Any] = {"uri": "s3://adapters/tiny"}
    if endpoint is not None:
        store["endpoint"] = endpoint
    return {"name": name, "engine": "vllm", "tier": "cpu", "source": "hf://org/tiny",
            "loraAdapters": [{"name": "legal"}], "loraStore": store}  # fmt: skip


def test_restricted_egress_reaches_the_lora_adapters_store() -> None:
    f = hybrid(
        lora_model("base", "http://minio.storage.svc:9000"),  # a Service: its namespace's pods
        lora_model("other", "https://objects.example.com"),  # a name: its addresses, on 443
        lora_model("aws", None),  # AWS S3: no endpoint, nothing pinned (egress.to; docs/sre.md)
    )
    endpoints = {(e.host, e.port, e.kind, e.models) for e in egress_endpoints(f)}
    assert endpoints == {
        ("minio.storage.svc", 9000, "service", ("base",)),
        ("objects.example.com", 443, "name", ("other",)),
    }
    assert external_endpoints(f) == []  # no external model among them
    egress = network_policy(f, **{"objects.example.com": ("198.51.100.7",)})["spec"]["egress"]
    storage = {"podSelector": {"matchLabels": {}},
               "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}}}  # fmt: skip
    assert egress[2:] == [
        {"to": [storage]},
        {"to": [{"ipBlock": {"cidr": "198.51.100.7/32"}}],
         "ports": [{"protocol": "TCP", "port": 443}]},
    ]  # fmt: skip
    cnp = desired_fqdn_policy(f, {"name": "f", "namespace": "ns"})
    assert cnp is not None and "objects.example.com" in str(cnp["spec"]["egress"])
