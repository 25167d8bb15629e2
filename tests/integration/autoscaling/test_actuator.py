"""The autoscaler's actuator called directly (no kopf loop) against the real API server, with
a metrics source the test sets by hand: what it persists, what the RayService says, what a
restarted operator renders, and the Off and DryRun modes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from shoal.autoscaling.types import ModelMetrics
from shoal.operator.autoscaler import autoscale_fleet
from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import reconcile_fleet
from shoal.operator.gateway import KubeGateway
from tests.integration.autoscaling.conftest import FakeSource, scaling_fleet, static_policy
from tests.integration.operator.conftest import Cluster, yaml_app

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)
ACTIVE = OperatorConfig(prometheus_url="http://prometheus.invalid:9090")


def deployments(cluster: Cluster) -> dict[str, dict[str, Any]]:
    rs = cluster.get("rayservice", "f")
    assert rs is not None
    return {d["name"]: d for d in yaml_app(rs)["deployments"]}


def setup(cluster: Cluster, config: OperatorConfig, **kw: Any) -> KubeGateway:
    cluster.apply(static_policy(), scaling_fleet(**kw))
    gw = KubeGateway(cluster.cp.api_client())
    reconcile_fleet(gw, config, cluster.get("fleet", "f"), T0)
    return gw


def logged_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Events as posted outside a running kopf loop (logged by shoal.operator.events)."""
    return [r.getMessage() for r in caplog.records if r.name == "shoal.operator.events"]


def test_active_scales_persists_and_survives_a_restart(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "shoal.operator.events")
    gw = setup(cluster, ACTIVE)
    # Active from the start: fixed replicas for every model, no Ray Serve autoscaling.
    deps = deployments(cluster)
    assert deps["model-alpha"]["num_replicas"] == 1
    assert "autoscaling_config" not in deps["model-alpha"]

    src = FakeSource({"alpha": 7.0, "beta": 0.0})
    out = autoscale_fleet(gw, ACTIVE, src, cluster.get("fleet", "f"), T0)
    assert out.applied
    status = (cluster.get("fleet", "f") or {})["status"]
    auto = {m["name"]: m for m in status["autoscaler"]["models"]}
    assert status["autoscaler"]["mode"] == "Active"
    assert auto["alpha"]["replicas"] == 4  # ceil(7 / 2)
    assert "7.0 requests in flight need 4 replicas at 2 each" in auto["alpha"]["reason"]
    assert status["lastScaling"] == [
        {"tier": "small", "time": "2026-11-01T00:00:00Z", "model": "alpha",
         "fromReplicas": 1, "toReplicas": 4, "reason": auto["alpha"]["reason"]}
    ]  # fmt: skip
    assert deployments(cluster)["model-alpha"]["num_replicas"] == 4
    assert {m["name"]: m["desiredReplicas"] for m in status["models"]} == {"alpha": 4, "beta": 1}

    # A restarted operator (fresh config object, no memory) renders the same replicas.
    reconcile_fleet(gw, OperatorConfig(prometheus_url="http://x:9090"),
                    cluster.get("fleet", "f"), T0 + timedelta(seconds=1))  # fmt: skip
    assert deployments(cluster)["model-alpha"]["num_replicas"] == 4

    # Load gone: the persisted change time holds the scale-down for the 10s cooldown.
    src.in_flight["alpha"] = 0.0
    held = autoscale_fleet(gw, ACTIVE, src, cluster.get("fleet", "f"), T0 + timedelta(seconds=5))
    assert held.decision is not None and not held.decision.changes
    assert "scale-down cooldown" in held.decision.by_model()["alpha"].reason
    later = T0 + timedelta(seconds=11)
    autoscale_fleet(gw, ACTIVE, src, cluster.get("fleet", "f"), later)
    assert deployments(cluster)["model-alpha"]["num_replicas"] == 2  # at most halves a step

    # Events say what changed and why (the KopfRunner test sees them posted).
    msgs = logged_events(caplog)
    assert f"ScaledUp: alpha: 1 -> 4 replicas: {auto['alpha']['reason']}" in msgs
    assert any(m.startswith("ScaledDown: alpha: 4 -> 2") for m in msgs)


def test_the_model_spilled_to_bridges_the_first_choice_s_replica_start(cluster: Cluster) -> None:
    # alpha steps to 10 req/s at 2 s a request. None of its replicas is ready (nothing plays
    # KubeRay here: the fleet's status reports 0 ready), so while its new replicas start 20
    # requests in flight spill, mostly to beta (what Prometheus measured over the burst
    # window). beta is sized to carry them, up to its tier's maxReplicas.
    step = ModelMetrics(in_flight=8.0, peak_in_flight=8.0, waiting=4.0, ttft_p95_seconds=0.9,
                        arrival_rate=4.0, latest_arrival_rate=10.0, service_seconds=2.0)  # fmt: skip
    src = FakeSource({"beta": 0.0}, metrics={"alpha": step}, spill_takers={"alpha": "beta"})
    off = replace(ACTIVE, autoscaler_spill_bridge=0.0)
    gw = setup(cluster, off, quick_beta=True)
    out = autoscale_fleet(gw, off, src, cluster.get("fleet", "f"), T0)
    assert out.decision is not None
    assert out.decision.by_model()["beta"].desired == 1  # the bridge off: beta idles

    bridged = autoscale_fleet(gw, ACTIVE, src, cluster.get("fleet", "f"), T0)
    assert bridged.decision is not None and bridged.applied
    beta = bridged.decision.by_model()["beta"]
    assert beta.reason == (
        "scale up to 6: spillover bridge: 20.0 in flight beyond the ready replicas of alpha "
        "10.0 req/s while their replicas start"
    )  # 20 in flight at 2 each would want 10 and more: the tier's maxReplicas
    assert deployments(cluster)["model-beta"]["num_replicas"] == 6
    status = (cluster.get("fleet", "f") or {})["status"]
    auto = {m["name"]: m for m in status["autoscaler"]["models"]}
    assert auto["beta"]["replicas"] == 6 and "spillover bridge" in auto["beta"]["reason"]

    # The same spills into a model that starts no faster than alpha bridge nothing.
    slow = scaling_fleet(quick_beta=True)
    slow["spec"]["tiers"][1]["autoscaling"]["replicaStartSeconds"] = 30
    cluster.apply(slow)
    same = autoscale_fleet(gw, ACTIVE, src, cluster.get("fleet", "f"), T0 + timedelta(seconds=60))
    assert same.decision is not None
    assert "spillover bridge" not in same.decision.by_model()["beta"].reason


def test_unavailable_metrics_hold_and_say_so(cluster: Cluster) -> None:
    gw = setup(cluster, ACTIVE)
    src = FakeSource(error="prometheus.invalid unreachable")
    out = autoscale_fleet(gw, ACTIVE, src, cluster.get("fleet", "f"), T0)
    assert out.decision is not None and not out.decision.changes
    auto = (cluster.get("fleet", "f") or {})["status"]["autoscaler"]
    assert all("metrics unavailable" in m["reason"] for m in auto["models"])
    cond = _condition(cluster, "MetricsAvailable")
    assert cond["status"] == "False" and cond["reason"] == "MetricsUnavailable", cond
    assert "prometheus.invalid unreachable" in cond["message"]
    assert "held at its last replica count" in cond["message"]
    stale = FakeSource({"alpha": 50.0, "beta": 0.0}, age_seconds=600)
    out = autoscale_fleet(gw, ACTIVE, stale, cluster.get("fleet", "f"), T0)
    assert out.decision is not None and not out.decision.changes
    assert deployments(cluster)["model-alpha"]["num_replicas"] == 1
    # Prometheus answers again: the condition turns True.
    autoscale_fleet(
        gw, ACTIVE, FakeSource({"alpha": 0.0, "beta": 0.0}), cluster.get("fleet", "f"), T0
    )
    cond = _condition(cluster, "MetricsAvailable")
    assert cond["status"] == "True" and cond["reason"] == "MetricsRead", cond


def _condition(cluster: Cluster, type_: str) -> dict[str, Any]:
    conditions = ((cluster.get("fleet", "f") or {}).get("status") or {}).get("conditions") or []
    found = [c for c in conditions if c["type"] == type_]
    assert found, f"no {type_} condition in {conditions}"
    return dict(found[0])


def test_budget_is_never_exceeded(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "shoal.operator.events")
    gw = setup(cluster, ACTIVE, budget="4.00")
    src = FakeSource({"alpha": 12.0, "beta": 12.0})  # each wants 6: 12.00/h
    out = autoscale_fleet(gw, ACTIVE, src, cluster.get("fleet", "f"), T0)
    assert out.decision is not None and out.decision.budget_binding
    deps = deployments(cluster)
    assert deps["model-alpha"]["num_replicas"] + deps["model-beta"]["num_replicas"] == 4
    status = (cluster.get("fleet", "f") or {})["status"]
    assert status["autoscaler"]["budgetBinding"] is True
    assert status["autoscaler"]["desiredCostPerHour"] == "4.00"
    assert status["costPerHour"] == "4.00"
    assert any(
        m.startswith("BudgetBinding: $4.00/h of a $4.00/h budget") for m in logged_events(caplog)
    )


def test_default_budget_from_the_operator_applies_without_spec_budget(cluster: Cluster) -> None:
    config = replace(ACTIVE, default_budget_per_hour="3.00")
    gw = setup(cluster, config)
    autoscale_fleet(gw, config, FakeSource({"alpha": 20.0, "beta": 0.0}),
                    cluster.get("fleet", "f"), T0)  # fmt: skip
    deps = deployments(cluster)
    assert deps["model-alpha"]["num_replicas"] == 2 and deps["model-beta"]["num_replicas"] == 1
    auto = (cluster.get("fleet", "f") or {})["status"]["autoscaler"]
    assert auto["budgetPerHour"] == "3.00"


def test_dry_run_reports_and_never_touches_replicas(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "shoal.operator.events")
    config = replace(ACTIVE, autoscaler_dry_run=True)
    gw = setup(cluster, config)
    rs_before = cluster.get("rayservice", "f")
    out = autoscale_fleet(gw, config, FakeSource({"alpha": 7.0, "beta": 0.0}),
                          cluster.get("fleet", "f"), T0)  # fmt: skip
    assert out.decision is not None and out.decision.changes and not out.applied
    rs_after = cluster.get("rayservice", "f")
    assert rs_after is not None and rs_before is not None
    assert rs_after["spec"] == rs_before["spec"]
    assert "autoscaling_config" in deployments(cluster)["model-alpha"]  # Ray Serve owns it
    status = (cluster.get("fleet", "f") or {})["status"]
    assert status["autoscaler"]["mode"] == "DryRun"
    assert status["autoscaler"]["message"].startswith("dry run, nothing applied")
    assert status["lastScaling"][0]["reason"].startswith("dry run, not applied: scale up to 4")
    assert status.get("effectiveAlpha") is None
    assert any(m.startswith("WouldScaleUp: alpha: 1 -> 4") for m in logged_events(caplog))


def test_off_says_why_and_hands_replicas_back_to_ray_serve(cluster: Cluster) -> None:
    gw = setup(cluster, ACTIVE)
    autoscale_fleet(gw, ACTIVE, FakeSource({"alpha": 7.0, "beta": 0.0}),
                    cluster.get("fleet", "f"), T0)  # fmt: skip
    assert deployments(cluster)["model-alpha"]["num_replicas"] == 4
    off = OperatorConfig()  # SHOAL_PROMETHEUS_URL empty
    autoscale_fleet(gw, off, None, cluster.get("fleet", "f"), T0 + timedelta(seconds=1))
    auto = (cluster.get("fleet", "f") or {})["status"]["autoscaler"]
    assert auto["mode"] == "Off"
    assert "SHOAL_PROMETHEUS_URL is empty" in auto["message"]
    cfg = deployments(cluster)["model-alpha"]["autoscaling_config"]
    assert (cfg["min_replicas"], cfg["max_replicas"]) == (1, 6)
    assert "num_replicas" not in deployments(cluster)["model-alpha"]


def test_scale_to_zero_parks_the_model(cluster: Cluster) -> None:
    """A decided zero is applied: the model's deployment may run 0..1 replicas starting at 0
    (serveConfigV2 cannot say num_replicas: 0), and the ingress routes around it."""
    spec = scaling_fleet()
    spec["spec"]["tiers"][0]["autoscaling"].update(minReplicas=0, scaleToZero=True)
    cluster.apply(static_policy(), spec)
    gw = KubeGateway(cluster.cp.api_client())
    reconcile_fleet(gw, ACTIVE, cluster.get("fleet", "f"), T0)
    out = autoscale_fleet(gw, ACTIVE, FakeSource({"alpha": 0.0, "beta": 0.0}),
                          cluster.get("fleet", "f"), T0)  # fmt: skip
    assert out.decision is not None
    assert {c.model: c.desired for c in out.decision.changes}["alpha"] == 0
    auto = {
        m["name"]: m for m in (cluster.get("fleet", "f") or {})["status"]["autoscaler"]["models"]
    }
    assert auto["alpha"]["replicas"] == 0
    assert auto["alpha"]["reason"].startswith("scale to zero: no traffic and no demand")
    alpha = deployments(cluster)["model-alpha"]
    assert "num_replicas" not in alpha
    assert alpha["autoscaling_config"]["min_replicas"] == 0
    assert alpha["autoscaling_config"]["initial_replicas"] == 0
    assert alpha["autoscaling_config"]["max_replicas"] == 1
    rs = cluster.get("rayservice", "f") or {}
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["replicas"]["alpha"] == 0  # the ingress reads it: alpha is parked
