"""Fleet and policy status from observations: conditions, replicas, cost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shoal.api.v1alpha1 import ConditionStatus, ModelFleet, RoutingPolicy
from shoal.api.v1alpha1.policy import RouterArtifactStatus
from shoal.contract import BuildArgs, deployment_plans
from shoal.planning.conditions import condition, set_condition
from shoal.planning.status import (
    FleetObservation,
    SpecProblem,
    fleet_status,
    metrics_conditions,
    policy_status,
)

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
FLEET = ModelFleet.model_validate(
    {
        "metadata": {"name": "f", "namespace": "ns", "generation": 2},
        "spec": {
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "t", "costPerReplicaHour": "1.25"}],
            "models": [
                {
                    "name": "a",
                    "engine": "simulated",
                    "tier": "t",
                    "minReplicas": 2,
                    "maxReplicas": 4,
                },
                {"name": "b", "engine": "simulated", "tier": "t"},
            ],
        },
    }
)
POLICY = RoutingPolicy.model_validate(
    {"metadata": {"name": "p", "namespace": "ns", "generation": 1},
     "spec": {"strategy": "static", "staticOrder": ["a", "b"]}}
)  # fmt: skip
PLANS = deployment_plans(BuildArgs(fleet_name="f", fleet=FLEET.spec, policy=POLICY.spec))


def rayservice(ready: bool, observed: int = 1, deployments: dict[str, str] | None = None,
               app: str = "RUNNING") -> dict[str, Any]:  # fmt: skip
    """A stand-in for the status KubeRay writes (tests/integration/kuberay has KubeRay's own
    controller write it for the same paths)."""
    return {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "reason": "NonZeroServeEndpoints" if ready else "Initializing"}],
            "activeServiceStatus": {"applicationStatuses": {"f": {
                "status": app,
                "serveDeploymentStatuses": {k: {"status": v} for k, v in (deployments or {}).items()},
            }}},
        },
    }  # fmt: skip


def cond(status: Any, type: str) -> tuple[ConditionStatus, str]:
    c = condition(status.conditions, type)
    assert c is not None, type
    return c.status, c.reason


def test_missing_policy_is_degraded_with_reason() -> None:
    problem = SpecProblem("RoutingPolicyNotFound", "RoutingPolicy 'p' does not exist")
    status = fleet_status(FLEET, FleetObservation(problem=problem), None, NOW)
    assert cond(status, "Degraded") == (ConditionStatus.TRUE, "RoutingPolicyNotFound")
    assert cond(status, "Ready") == (ConditionStatus.FALSE, "RoutingPolicyNotFound")
    assert status.observed_generation == 2


def test_progressing_until_kuberay_reports_ready() -> None:
    seen = FleetObservation(policy=POLICY, rayservice=rayservice(False), plans=PLANS)
    status = fleet_status(FLEET, seen, None, NOW)
    assert cond(status, "Progressing") == (ConditionStatus.TRUE, "Deploying")
    assert cond(status, "Ready")[0] == ConditionStatus.FALSE
    assert status.endpoint == "http://f.ns.svc:8000/v1"


def test_not_ready_while_kuberay_has_not_observed_the_new_spec() -> None:
    rs = rayservice(True, observed=0)
    status = fleet_status(
        FLEET, FleetObservation(policy=POLICY, rayservice=rs, plans=PLANS), None, NOW
    )
    assert cond(status, "Ready")[0] == ConditionStatus.FALSE


def test_ready_with_replicas_and_cost() -> None:
    rs = rayservice(True, deployments={"model-a": "HEALTHY", "model-b": "UPDATING"})
    status = fleet_status(
        FLEET, FleetObservation(policy=POLICY, rayservice=rs, plans=PLANS), None, NOW
    )
    assert cond(status, "Ready") == (ConditionStatus.TRUE, "AllModelsReady")
    assert cond(status, "Progressing") == (ConditionStatus.FALSE, "Deployed")
    assert cond(status, "RouterReady") == (ConditionStatus.TRUE, "StaticOrder")
    a, b = status.models
    assert (a.desired_replicas, a.ready_replicas, a.state) == (2, 2, "HEALTHY")
    assert (b.desired_replicas, b.ready_replicas) == (1, 0)
    assert status.ready_models == "1/2"
    assert status.cost_per_hour == "3.75"  # 3 replicas x 1.25


def test_failed_application_is_degraded() -> None:
    rs = rayservice(False, app="DEPLOY_FAILED")
    status = fleet_status(
        FLEET, FleetObservation(policy=POLICY, rayservice=rs, plans=PLANS), None, NOW
    )
    assert cond(status, "Degraded") == (ConditionStatus.TRUE, "ServeApplicationUnhealthy")


def test_transition_time_moves_only_on_change() -> None:
    rs = rayservice(True, deployments={"model-a": "HEALTHY"})
    seen = FleetObservation(policy=POLICY, rayservice=rs, plans=PLANS)
    first = fleet_status(FLEET, seen, None, NOW)
    later = fleet_status(FLEET, seen, first, NOW + timedelta(minutes=5))
    c1, c2 = condition(first.conditions, "Ready"), condition(later.conditions, "Ready")
    assert c1 and c2 and c1.last_transition_time == c2.last_transition_time == NOW


def test_set_condition_replaces_by_type() -> None:
    conds = set_condition(
        [], type="Ready", status=False, reason="A", message="", generation=1, now=NOW
    )
    conds = set_condition(conds, type="Ready", status=True, reason="B", message="", generation=2,
                          now=NOW + timedelta(seconds=1))  # fmt: skip
    assert len(conds) == 1 and conds[0].reason == "B"
    assert conds[0].last_transition_time == NOW + timedelta(seconds=1)


def test_policy_status_after_fit_and_after_failed_refit() -> None:
    policy = RoutingPolicy.model_validate(
        {"metadata": {"name": "p", "generation": 4},
         "spec": {"calibration": {"configMapRef": {"name": "c", "key": "k"}}}}
    )  # fmt: skip
    art = RouterArtifactStatus(config_map="p-router-artifact", checksum="sha256:x",
                               format_version=1, fitted_at=NOW, samples=40, clusters=4,
                               models=["a", "b"])  # fmt: skip
    ok = policy_status(policy, artifact=art, fit_error=None, previous=None, now=NOW)
    assert cond(ok, "Ready") == (ConditionStatus.TRUE, "Fitted")
    bad = policy_status(policy, artifact=art, fit_error=SpecProblem("CalibrationInvalid", "row 3: NaN"),
                        previous=ok, now=NOW)  # fmt: skip
    assert cond(bad, "Fitted") == (ConditionStatus.FALSE, "CalibrationInvalid")
    assert cond(bad, "Ready")[0] == ConditionStatus.TRUE  # still serving the previous artifact
    assert bad.artifact == art


def test_a_policy_reconcile_keeps_what_the_refit_reported() -> None:
    from shoal.api.v1alpha1.policy import ShadowRefitStatus

    policy = RoutingPolicy.model_validate(
        {"metadata": {"name": "p", "generation": 4},
         "spec": {"calibration": {"configMapRef": {"name": "c", "key": "k"}},
                  "feedback": {"enabled": True}}}
    )  # fmt: skip
    art = RouterArtifactStatus(config_map="p-router-artifact", checksum="sha256:x",
                               format_version=1, fitted_at=NOW, samples=40, clusters=4,
                               models=["a", "b"])  # fmt: skip
    shadow = ShadowRefitStatus(events=120, estimated_change_percent="0.40",
                               lower_bound_percent="-1.10", clusters_changed=1,
                               traffic_changed_percent="12.50", reason="Shadow", at=NOW)  # fmt: skip
    refit = set_condition([], type="RouterRefit", status=False, reason="Shadow", message="m",
                          generation=4, now=NOW)  # fmt: skip
    previous = policy_status(policy, artifact=art, fit_error=None, previous=None, now=NOW)
    previous = previous.model_copy(
        update={"conditions": previous.conditions + refit, "feedback_events": 120,
                "shadow_refit": shadow}
    )  # fmt: skip
    again = policy_status(policy, artifact=art, fit_error=None, previous=previous, now=NOW)
    assert again.shadow_refit == shadow and again.feedback_events == 120


def test_a_parked_healthy_model_counts_as_ready_and_costs_nothing() -> None:
    plans = deployment_plans(
        BuildArgs(fleet_name="f", fleet=FLEET.spec, policy=POLICY.spec, replicas={"a": 2, "b": 0})
    )
    rs = rayservice(True, deployments={"model-a": "HEALTHY", "model-b": "HEALTHY"})
    status = fleet_status(
        FLEET, FleetObservation(policy=POLICY, rayservice=rs, plans=plans), None, NOW
    )
    assert status.ready_models == "2/2"
    b = next(m for m in status.models if m.name == "b")
    assert (b.desired_replicas, b.ready_replicas) == (0, 0)
    assert status.cost_per_hour == "2.50"  # a's two replicas only


def test_progressing_while_kuberay_upgrades_and_the_active_cluster_serves() -> None:
    rs = rayservice(True, deployments={"model-a": "HEALTHY", "model-b": "HEALTHY"})
    rs["status"]["conditions"].append(
        {"type": "UpgradeInProgress", "status": "True", "reason": "BothActivePendingClustersExist",
         "message": "Both active and pending Ray clusters exist"}
    )  # fmt: skip
    rs["status"]["pendingServiceStatus"] = {"rayClusterName": "f-xyz12"}
    status = fleet_status(
        FLEET, FleetObservation(policy=POLICY, rayservice=rs, plans=PLANS), None, NOW
    )
    assert cond(status, "Ready") == (ConditionStatus.TRUE, "AllModelsReady")
    assert cond(status, "Progressing") == (ConditionStatus.TRUE, "Upgrading")
    message = condition(status.conditions, "Progressing").message  # type: ignore[union-attr]
    assert "RayCluster f-xyz12" in message and "active cluster serves" in message


def test_not_ready_names_the_raycluster_kuberay_is_starting() -> None:
    rs = rayservice(False)
    rs["status"]["conditions"][0]["message"] = "RayService is initializing"
    rs["status"]["pendingServiceStatus"] = {"rayClusterName": "f-abcde"}
    status = fleet_status(
        FLEET, FleetObservation(policy=POLICY, rayservice=rs, plans=PLANS), None, NOW
    )
    ready = condition(status.conditions, "Ready")
    assert ready is not None and ready.message == (
        "RayService not ready: Initializing RayService is initializing; "
        "KubeRay is starting RayCluster f-abcde"
    )


def test_metrics_condition_says_why_replicas_are_held_and_clears() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    down = metrics_conditions([], "connection refused", 3, t0)
    assert down is not None
    c = condition(down, "MetricsAvailable")
    assert c is not None and c.status == ConditionStatus.FALSE
    assert c.reason == "MetricsUnavailable" and "connection refused" in c.message
    assert c.observed_generation == 3
    # The same outage again: nothing to write.
    assert metrics_conditions(down, "connection refused", 3, t0 + timedelta(seconds=15)) is None
    up = metrics_conditions(down, None, 3, t0 + timedelta(seconds=30))
    assert up is not None
    c = condition(up, "MetricsAvailable")
    assert c is not None and c.status == ConditionStatus.TRUE and c.reason == "MetricsRead"
    assert c.last_transition_time == t0 + timedelta(seconds=30)
    assert metrics_conditions(up, None, 3, t0 + timedelta(seconds=45)) is None
