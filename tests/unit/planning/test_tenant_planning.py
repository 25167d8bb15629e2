"""Tenants, planned: Secrets to digests (or the reason not), tenants to the ingress's access
config as its user_config (never the builder's args), the HTTPRoute, the Exposed warning."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import yaml
from tests.unit.planning.test_children import ART, fleet, policy

from shoal.api.v1alpha1 import Tenant
from shoal.api.v1alpha1.tenant import API_KEY_LABEL, SecretKeySelector
from shoal.contract.tenants import AccessConfig, key_digest
from shoal.planning import names
from shoal.planning.children import PlanSettings, desired_children
from shoal.planning.status import EXPOSED, FleetObservation, exposure_problem, fleet_status
from shoal.planning.tenants import (
    AccessSettings,
    KeyResult,
    access_config,
    key_from_secret,
    resolve_tenant,
    tenant_status,
    usage_status,
)

KEY = "k" * 40
OTHER = "o" * 48
NOW = datetime(2026, 12, 1, tzinfo=UTC)
REF = SecretKeySelector(name="team-key", key="key")


def secret(value: str | None = KEY, *, marked: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "team-key", "namespace": "ns"}
    if marked:
        meta["labels"] = {API_KEY_LABEL: "true"}
    data = {"key": base64.b64encode(value.encode()).decode()} if value is not None else {}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}


def tenant(name: str = "team", **spec: Any) -> Tenant:
    spec.setdefault("fleetRef", {"name": "f"})
    spec.setdefault("apiKeys", [{"secretRef": {"name": "team-key", "key": "key"}}])
    return Tenant.model_validate(
        {"metadata": {"name": name, "namespace": "ns", "generation": 2}, "spec": spec}
    )


def test_a_marked_secret_gives_the_digest_only() -> None:
    got = key_from_secret(secret(), REF, "ns")
    assert got == KeyResult(digest=key_digest(KEY))


def test_refused_secrets_say_why_without_the_key() -> None:
    cases = {
        "KeySecretMissing": key_from_secret(None, REF, "ns"),
        "KeySecretNotMarked": key_from_secret(secret(marked=False), REF, "ns"),
        "KeyMissing": key_from_secret(secret(None), REF, "ns"),
        "KeyTooShort": key_from_secret(secret("short-key"), REF, "ns"),
    }
    for reason, got in cases.items():
        assert got.digest is None and got.problem is not None
        assert got.problem.reason == reason
        assert "team-key" in got.problem.message
        assert KEY not in got.problem.message and "short-key" not in got.problem.message
    assert API_KEY_LABEL in cases["KeySecretNotMarked"].problem.message  # type: ignore[union-attr]


def test_a_ready_tenant_becomes_its_access() -> None:
    t = tenant(
        limits={"requestsPerMinute": 60, "tokensPerMinute": 1000, "concurrentRequests": 3},
        budget={"maxCostPerHour": "2.50", "softLimitPercent": 70},
        routing={"minAlpha": "0.2", "maxAlpha": "0.9", "cascadeStreaming": "FirstModel"},
        allowedTiers=["cpu"],
        allowedModels=["code"],
    )
    r = resolve_tenant(t, fleet(), [KeyResult(digest=key_digest(KEY))])
    assert r.ready and r.problem is None
    assert r.access is not None
    assert r.access.key_digests == [key_digest(KEY)]
    assert r.access.limits.requests_per_minute == 60
    assert r.access.limits.concurrent_requests == 3
    assert str(r.access.max_cost_per_hour) == "2.50" and r.access.budget_soft_percent == 70
    assert (r.access.min_alpha, r.access.max_alpha) == (0.2, 0.9)
    assert r.access.cascade_streaming == "FirstModel"
    assert r.access.models == ["tiny", "code"]  # fleet order: the tier's model and the listed one


def test_unknown_fleet_tier_and_model_are_not_served() -> None:
    ok = [KeyResult(digest=key_digest(KEY))]
    assert resolve_tenant(tenant(), None, ok).problem.reason == "UnknownFleet"  # type: ignore[union-attr]
    tier = resolve_tenant(tenant(allowedTiers=["gold"]), fleet(), ok)
    assert not tier.ready and tier.problem and tier.problem.reason == "UnknownTier"
    assert "spec.allowedTiers" in tier.problem.message and "gold" in tier.problem.message
    model = resolve_tenant(tenant(allowedModels=["nope"]), fleet(), ok)
    assert model.problem and model.problem.reason == "UnknownModel"
    assert "spec.allowedModels" in model.problem.message


def test_one_failing_key_of_two_keeps_the_tenant_served() -> None:
    """Rotation overlap: a new key's Secret not there yet must not lock the team out."""
    bad = key_from_secret(None, REF, "ns")
    r = resolve_tenant(tenant(), fleet(), [KeyResult(digest=key_digest(KEY)), bad])
    assert r.ready and r.keys == 1
    status = tenant_status(r, None, NOW)
    conds = {c.type: c for c in status.conditions}
    assert conds["Ready"].status == "True"
    assert (conds["KeysResolved"].status, conds["KeysResolved"].reason) == (
        "False",
        "KeySecretMissing",
    )
    none = resolve_tenant(tenant(), fleet(), [bad])
    assert not none.ready and none.problem and none.problem.reason == "KeySecretMissing"
    conds = {c.type: c for c in tenant_status(none, None, NOW).conditions}
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "KeySecretMissing")
    assert status.keys == 1 and KEY not in status.model_dump_json()


def test_access_config_renders_ready_tenants_as_user_config_only() -> None:
    f = fleet(access={"mode": "Tenants"})
    a = resolve_tenant(tenant("a"), f, [KeyResult(digest=key_digest(KEY))])
    b = resolve_tenant(
        tenant("b"), f, [KeyResult(problem=key_from_secret(None, REF, "ns").problem)]
    )
    config = access_config(f, [b, a], AccessSettings(store_failure_mode="closed"))
    assert config is not None and config.mode == "tenants"
    assert [t.name for t in config.tenants] == ["a"]
    assert config.store_failure_mode == "closed"

    before = desired_children(f, policy(), ART, PlanSettings(), None)
    after = desired_children(f, policy(), ART, PlanSettings(), config)
    app_before = yaml.safe_load(before.rayservice["spec"]["serveConfigV2"])["applications"][0]
    app_after = yaml.safe_load(after.rayservice["spec"]["serveConfigV2"])["applications"][0]
    assert app_before["args"] == app_after["args"]  # onboarding redeploys nothing
    ingress = app_after["deployments"][0]
    assert ingress["name"] == "router"
    assert AccessConfig.from_user_config(ingress["user_config"]) == config
    assert KEY not in after.rayservice["spec"]["serveConfigV2"]
    assert key_digest(KEY) in after.rayservice["spec"]["serveConfigV2"]


def test_an_open_fleet_without_tenants_renders_no_user_config() -> None:
    assert access_config(fleet(), [], AccessSettings()) is None
    tenants_mode = access_config(fleet(access={"mode": "Tenants"}), [], AccessSettings())
    assert tenants_mode is not None and tenants_mode.tenants == []  # every request: 401


def test_a_key_two_tenants_claim_serves_neither() -> None:
    f = fleet(access={"mode": "Tenants"})
    a = resolve_tenant(tenant("a"), f, [KeyResult(digest=key_digest(KEY))])
    b = resolve_tenant(
        tenant("b"), f, [KeyResult(digest=key_digest(KEY)), KeyResult(digest=key_digest(OTHER))]
    )
    config = access_config(f, [a, b], AccessSettings())
    assert config is not None
    assert [(t.name, t.key_digests) for t in config.tenants] == [("b", [key_digest(OTHER)])]
    reason = {c.type: c.reason for c in tenant_status(a, None, NOW, shared_key=True).conditions}
    assert reason["KeysResolved"] == "KeyShared"


def test_usage_status_rounds_and_compares_with_the_budget() -> None:
    t = tenant(budget={"maxCostPerHour": "2.00"})
    u = usage_status(t, cost_usd=0.512345, requests=99.6, tokens=1234.2, now=NOW)
    assert (u.last_hour_cost_usd, u.last_hour_requests, u.last_hour_tokens) == ("0.5123", 100, 1234)
    assert u.budget_used_percent == 25


def test_http_route_points_at_the_fleet_service() -> None:
    gw = {"parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
          "hostnames": ["llm.example.com"]}  # fmt: skip
    f = fleet(serving={"gateway": gw}, access={"mode": "Tenants"})
    route = desired_children(f, policy(), ART, PlanSettings()).http_route
    assert route is not None
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["kind"] == "HTTPRoute"
    assert route["metadata"]["name"] == names.http_route_name("f")
    assert route["metadata"]["ownerReferences"][0]["name"] == "f"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public",
         "namespace": "gateways", "sectionName": "https"}
    ]  # fmt: skip
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["kind"], backend["name"], backend["port"]) == ("Service", "f", names.SERVE_PORT)
    objects = desired_children(f, policy(), ART, PlanSettings()).objects()
    assert [o["kind"] for o in objects][-2:] == ["Service", "HTTPRoute"]
    assert desired_children(fleet(), policy(), ART, PlanSettings()).http_route is None


def test_open_fleets_outside_the_cluster_are_exposed() -> None:
    assert exposure_problem(fleet()) is None
    assert exposure_problem(fleet(serving={"serviceType": "NodePort", "gateway": None})) is not None
    lb = fleet(serving={"serviceType": "LoadBalancer"})
    problem = exposure_problem(lb)
    assert problem is not None and problem.reason == "OpenEndpoint"
    assert "LoadBalancer" in problem.message and "spec.access.mode" in problem.message
    assert exposure_problem(fleet(serving={"serviceType": "LoadBalancer"},
                                  access={"mode": "Tenants"})) is None  # fmt: skip
    status = fleet_status(lb, FleetObservation(policy=policy()), None, NOW)
    exposed = next(c for c in status.conditions if c.type == EXPOSED)
    assert (exposed.status, exposed.reason) == ("True", "OpenEndpoint")
    quiet = fleet_status(fleet(), FleetObservation(policy=policy()), None, NOW)
    assert next(c for c in quiet.conditions if c.type == EXPOSED).status == "False"
