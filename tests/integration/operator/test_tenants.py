"""Tenants against the real API server: their keys (digests only) reach the fleet's ingress
as its Ray Serve ``user_config``; a rotated Secret takes effect without a restart and without
touching the builder's ``args``; refused Secrets are conditions; an open fleet exposed outside
the cluster warns; a fleet that names a Gateway gets an HTTPRoute the API server accepts; and
no key appears in any log line, event, status, RayService or metric of the operator."""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.api.v1alpha1.tenant import API_KEY_LABEL
from shoal.contract.tenants import AccessConfig, key_digest
from shoal.operator.cache import ObjectCache
from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import reconcile_fleet
from shoal.operator.gateway import KubeGateway
from tests.integration.operator.conftest import Cluster, fleet, policy, wait_for, yaml_app

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, tzinfo=UTC)
#: Two keys as `shoal tenant key` makes them (48 characters), and a third for another team.
KEY_A = "tA9xq2LmV7pR4sWc8nZ1bK6yH3jF5dG0eQuIoPaSdFgHjKlZ"
KEY_B = "Zx8Cv7Bn6Mm5Ll4Kk3Jj2Hh1Gg0Ff9Dd8Ss7Aa6Qq5Ww4Ee3R"
KEY_C = "Pp0Oo9Ii8Uu7Yy6Tt5Rr4Ee3Ww2Qq1Aa0Ss9Dd8Ff7Gg6Hh5J"


def static_policy() -> dict[str, Any]:
    return policy(strategy="static", staticOrder=["alpha", "beta"], calibration=None,
                  clusters=None, topP=None)  # fmt: skip


def key_secret(name: str, key: str, *, marked: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if marked:
        meta["labels"] = {API_KEY_LABEL: "true"}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"key": key}}


def tenant(name: str, *secrets: str, fleet_name: str = "f", **spec: Any) -> dict[str, Any]:
    spec.setdefault("fleetRef", {"name": fleet_name})
    spec.setdefault("apiKeys", [{"secretRef": {"name": s, "key": "key"}} for s in secrets])
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def router(cluster: Cluster, name: str = "f") -> tuple[dict[str, Any], AccessConfig]:
    """The fleet's application args and its ingress's access config, as rendered."""
    rs = cluster.get("rayservice", name)
    assert rs is not None
    app = yaml_app(rs)
    ingress = next(d for d in app["deployments"] if d["name"] == "router")
    return app["args"], AccessConfig.from_user_config(ingress.get("user_config"))


def digests(cluster: Cluster, name: str = "f") -> set[str]:
    try:
        _, access = router(cluster, name)
    except AssertionError:
        return set()
    return {d for t in access.tenants for d in t.key_digests}


def events(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.cp.kubectl("get", "events", "-n", cluster.ns, "-o", "json").stdout
    return list(json.loads(out)["items"])


def _reconcile(cluster: Cluster, name: str = "f", gw: KubeGateway | None = None) -> Any:
    gw = gw or KubeGateway(cluster.cp.api_client())
    return reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", name), NOW)


def _forms(key: str) -> list[str]:
    """A key as it could leak: itself, base64 (Secret data), and its halves."""
    return [key, base64.b64encode(key.encode()).decode(), key[:24], key[24:]]


def test_rotation_takes_effect_in_place_and_no_key_leaks(
    cluster: Cluster,
    operator: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A running operator: a tenant's key digest reaches the router's user_config; the
    Secret rotated to a new key replaces it within 30 s (measured), the builder's args
    untouched; then every log line, event, status, the RayService and the operator's metrics
    are searched for the keys."""
    caplog.set_level(logging.DEBUG)
    # The chart's defaults: the fleets' re-check every 30 s, so what picks the rotation up is
    # the tenant-key loop (every 10 s), as in a cluster.
    monkeypatch.setenv("SHOAL_RESYNC_SECONDS", "30")
    monkeypatch.setenv("SHOAL_TENANT_KEY_RESYNC_SECONDS", "10")
    cluster.apply(key_secret("team-a-key", KEY_A), key_secret("team-c-key", KEY_C),
                  static_policy(), fleet(access={"mode": "Tenants"}),
                  tenant("team-a", "team-a-key", limits={"requestsPerMinute": 60}),
                  tenant("team-c", "team-c-key", budget={"maxCostPerHour": "2.00"}))  # fmt: skip
    with operator() as runner:
        wait_for("both digests in the router's user_config",
                 lambda: digests(cluster) == {key_digest(KEY_A), key_digest(KEY_C)}, 60)  # fmt: skip
        args_before, access = router(cluster)
        assert access.mode == "tenants"
        team_a = next(t for t in access.tenants if t.name == "team-a")
        assert team_a.limits.requests_per_minute == 60
        ready = wait_for("team-a Ready", lambda: (c := cluster.condition("tenant", "team-a", "Ready"))
                         and c["status"] == "True" and c, 30)  # fmt: skip
        assert ready["reason"] == "KeysServed"
        assert (cluster.get("tenant", "team-a") or {})["status"]["keys"] == 1
        wait_for("fleet status counts tenants",
                 lambda: (cluster.get("fleet", "f") or {}).get("status", {}).get("tenants") == "2/2", 30)  # fmt: skip

        # Rotate: the Secret's value changes in place; nobody touches the Tenant or the fleet.
        generation = (cluster.get("rayservice", "f") or {})["metadata"]["generation"]
        start = time.monotonic()
        cluster.apply(key_secret("team-a-key", KEY_B))
        wait_for("the rotated digest", lambda: key_digest(KEY_B) in digests(cluster), 30, every=0.1)
        latency = time.monotonic() - start
        assert key_digest(KEY_A) not in digests(cluster)
        args_after, _ = router(cluster)
        assert args_after == args_before  # no rebuild: only the ingress's user_config changed
        assert (cluster.get("rayservice", "f") or {})["metadata"]["generation"] == generation + 1

        # The Secret loses its mark: that tenant's key stops serving, with a Warning.
        cluster.apply(key_secret("team-c-key", KEY_C, marked=False))
        wait_for(
            "the unmarked key withdrawn", lambda: key_digest(KEY_C) not in digests(cluster), 30
        )
        c = wait_for("team-c not Ready", lambda: (c := cluster.condition("tenant", "team-c", "Ready"))
                     and c["status"] == "False" and c, 30)  # fmt: skip
        assert c["reason"] == "KeySecretNotMarked" and API_KEY_LABEL in c["message"]
        wait_for("the Warning event", lambda: [e for e in events(cluster)
                 if e["reason"] == "KeySecretNotMarked" and e["type"] == "Warning"], 30)  # fmt: skip

        # Deleting a tenant withdraws its keys (no finalizer on tenants).
        cluster.delete("tenant", "team-a")
        wait_for("team-a's key withdrawn", lambda: not digests(cluster), 30)
        from prometheus_client import REGISTRY, generate_latest

        metrics = generate_latest(REGISTRY).decode()
    # Outside the runner, which captures stdout: the figure shows with `pytest -s`.
    print(f"\nrotation latency: {latency:.2f} s (Secret changed -> router user_config)")
    searched = {
        "operator log": caplog.text + (runner.stdout or ""),
        "events": json.dumps(events(cluster)),
        "statuses": json.dumps([cluster.get("tenant", "team-c"), cluster.get("fleet", "f")]),
        "RayService": json.dumps(cluster.get("rayservice", "f")),
        "metrics": metrics,
    }
    assert "team-c" in searched["statuses"] and searched["operator log"]
    for where, text in searched.items():
        for key in (KEY_A, KEY_B, KEY_C):
            leaked = [f for f in _forms(key) if f in text]
            assert not leaked, f"a key appears in the {where}"


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (None, "KeySecretMissing"),
        (key_secret("team-key", KEY_A, marked=False), "KeySecretNotMarked"),
        (key_secret("team-key", "too-short-a-key"), "KeyTooShort"),
    ],
    ids=["missing", "unmarked", "short"],
)
def test_refused_secret_is_a_condition_and_no_digest(
    cluster: Cluster, secret: dict[str, Any] | None, reason: str
) -> None:
    if secret is not None:
        cluster.apply(secret)
    cluster.apply(static_policy(), fleet(access={"mode": "Tenants"}), tenant("team", "team-key"))
    _reconcile(cluster)
    ready = cluster.condition("tenant", "team", "Ready")
    keys = cluster.condition("tenant", "team", "KeysResolved")
    assert ready and keys, cluster.get("tenant", "team")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert (keys["status"], keys["reason"]) == ("False", reason)
    assert "team-key" in ready["message"]
    _, access = router(cluster)
    assert access.mode == "tenants" and access.tenants == []  # every request: 401
    assert (cluster.get("tenant", "team") or {})["status"]["keys"] == 0
    text = json.dumps(cluster.get("tenant", "team")) + json.dumps(cluster.get("rayservice", "f"))
    assert KEY_A not in text and "too-short-a-key" not in text


def test_unknown_tier_and_fleet_are_tenant_conditions(cluster: Cluster) -> None:
    cluster.apply(key_secret("team-key", KEY_A), static_policy(),
                  fleet(access={"mode": "Tenants"}),
                  tenant("gold", "team-key", allowedTiers=["gold"]))  # fmt: skip
    _reconcile(cluster)
    ready = cluster.condition("tenant", "gold", "Ready")
    assert ready and (ready["status"], ready["reason"]) == ("False", "UnknownTier")
    assert "spec.allowedTiers" in ready["message"]
    assert not digests(cluster)
    # Only the tier changes: the tenant is served, with that tier's models only.
    cluster.apply(tenant("gold", "team-key", allowedTiers=["small"]))
    _reconcile(cluster)
    _, access = router(cluster)
    assert [(t.name, t.models) for t in access.tenants] == [("gold", ["alpha", "beta"])]


def test_tenant_of_a_missing_fleet_says_so(cluster: Cluster, operator: Any) -> None:
    cluster.apply(key_secret("team-key", KEY_A), tenant("lost", "team-key", fleet_name="nope"))
    with operator():
        ready = wait_for("Ready=False", lambda: (c := cluster.condition("tenant", "lost", "Ready"))
                         and c["status"] == "False" and c, 60)  # fmt: skip
    assert ready["reason"] == "UnknownFleet" and "spec.fleetRef" in ready["message"]


def test_open_fleet_behind_a_load_balancer_warns(cluster: Cluster, operator: Any) -> None:
    cluster.apply(static_policy(), fleet(serving={"serviceType": "LoadBalancer"}))
    with operator():
        exposed = wait_for("Exposed=True", lambda: (c := cluster.condition("fleet", "f", "Exposed"))
                           and c["status"] == "True" and c, 60)  # fmt: skip
        assert exposed["reason"] == "OpenEndpoint" and "LoadBalancer" in exposed["message"]
        (event,) = wait_for("the Warning event", lambda: [e for e in events(cluster)
                            if e["reason"] == "OpenEndpoint" and e["type"] == "Warning"], 30)[:1]  # fmt: skip
        assert event["involvedObject"]["kind"] == "ModelFleet"
        # Keys required: the warning clears.
        cluster.apply(fleet(serving={"serviceType": "LoadBalancer"}, access={"mode": "Tenants"}))
        cleared = wait_for("Exposed=False", lambda: (c := cluster.condition("fleet", "f", "Exposed"))
                           and c["status"] == "False" and c, 60)  # fmt: skip
        assert cleared["reason"] == "KeysRequired"


def test_gateway_gives_an_http_route_to_the_service(cluster: Cluster) -> None:
    """The Gateway API's own CRDs (from its Go module) judge the operator's HTTPRoute."""
    cluster.cp.install_gateway_api_crds()
    gateway = {"parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
               "hostnames": ["llm.example.com"]}  # fmt: skip
    cluster.apply(static_policy(), fleet(access={"mode": "Tenants"}, serving={"gateway": gateway}))
    gw = KubeGateway(cluster.cp.api_client(), cache=ObjectCache())  # what it wrote, remembered
    outcome = _reconcile(cluster, gw=gw)
    assert "HTTPRoute/f" in outcome.applied
    route = cluster.get("httproute", "f")
    assert route is not None, "the API server has no HTTPRoute"
    spec = route["spec"]
    assert spec["hostnames"] == ["llm.example.com"]
    assert spec["parentRefs"][0]["name"] == "public"
    assert spec["parentRefs"][0]["sectionName"] == "https"
    (rule,) = spec["rules"]
    (backend,) = rule["backendRefs"]
    service = cluster.get("service", "f")
    assert service is not None
    assert (backend["kind"], backend["name"]) == ("Service", service["metadata"]["name"])
    assert backend["port"] == service["spec"]["ports"][0]["port"]
    assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": "/v1"}
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelFleet"
    # Unchanged: no write; gateway removed: the route goes.
    assert _reconcile(cluster, gw=gw).applied == []
    cluster.apply(fleet(access={"mode": "Tenants"}))
    _reconcile(cluster, gw=gw)
    assert cluster.get("httproute", "f") is None


def test_tenants_of_a_deleted_fleet_say_so(cluster: Cluster, operator: Any) -> None:
    cluster.apply(key_secret("team-key", KEY_A), static_policy(),
                  fleet(access={"mode": "Tenants"}), tenant("team", "team-key"))  # fmt: skip
    with operator():
        wait_for("Ready", lambda: (c := cluster.condition("tenant", "team", "Ready"))
                 and c["status"] == "True", 60)  # fmt: skip
        cluster.delete("fleet", "f")
        gone = wait_for("Ready=False", lambda: (c := cluster.condition("tenant", "team", "Ready"))
                        and c["status"] == "False" and c, 30)  # fmt: skip
    assert gone["reason"] == "UnknownFleet"
