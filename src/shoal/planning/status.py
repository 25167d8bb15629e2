"""Status from observation: what the fleet and policy report, computed without I/O.

The operator gathers what it saw (the RayService and its status, whether the policy and its
artifact exist, a planning error if any) into a :class:`FleetObservation`; ``fleet_status``
turns that into the fleet's ``status``: ``Ready``, ``Progressing``, ``Degraded`` and
``RouterReady`` conditions, per-model replicas, endpoint and cost per hour; and ``Exposed``,
a warning that an open fleet (no API keys asked) is reachable from outside the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from shoal.api.v1alpha1 import Condition, ConditionStatus, ModelFleet, RoutingPolicy
from shoal.api.v1alpha1.fleet import ModelFleetStatus, ModelStatus
from shoal.api.v1alpha1.policy import RouterArtifactStatus, RoutingPolicyStatus
from shoal.contract import ModelDeploymentPlan, model_deployment_name
from shoal.planning import names
from shoal.planning.conditions import set_condition

READY, PROGRESSING, DEGRADED, ROUTER_READY, FITTED, EXPOSED, ROUTER_REFIT = (
    "Ready",
    "Progressing",
    "Degraded",
    "RouterReady",
    "Fitted",
    "Exposed",
    "RouterRefit",
)
#: The autoscaler's condition: True while it reads the fleet's metrics from Prometheus,
#: False (reason :data:`METRICS_UNAVAILABLE`) while it holds replicas for want of them.
METRICS_AVAILABLE = "MetricsAvailable"
METRICS_UNAVAILABLE = "MetricsUnavailable"
HEALTHY = "HEALTHY"
#: State of a model served outside the fleet (engine openai) whose key, if any, may be sent.
EXTERNAL = "EXTERNAL"


@dataclass(frozen=True)
class SpecProblem:
    """Why the object cannot work as written, or as the cluster allows (reported as Degraded)."""

    reason: str
    message: str


@dataclass(frozen=True)
class FleetObservation:
    """What the operator observed about a fleet and its children."""

    policy: RoutingPolicy | None = None
    problem: SpecProblem | None = None
    #: Checksum of the artifact the fleet serves (None: not fitted yet, or static strategy).
    artifact_checksum: str | None = None
    router_waiting: str | None = None
    rayservice: dict[str, Any] | None = None
    plans: list[ModelDeploymentPlan] = field(default_factory=list)
    #: Tenants whose keys the fleet serves, of those naming it, e.g. "2/3" (None: not known).
    tenants: str | None = None
    #: External models (engine openai) whose API key the operator may not send, and why
    #: (the reason word, e.g. ModelKeyNotMarked); they show that as their state.
    external_refusals: dict[str, str] = field(default_factory=dict)


def exposure_problem(fleet: ModelFleet) -> SpecProblem | None:
    """Why an open fleet is reachable from outside the cluster (None: it is not, or it asks
    for API keys)."""
    if fleet.spec.access.mode != "Open":
        return None
    serving = fleet.spec.serving
    ways = []
    if serving.service_type in ("LoadBalancer", "NodePort"):
        ways.append(f"its Service is of type {serving.service_type}")
    if serving.gateway is not None:
        gateways = ", ".join(p.name for p in serving.gateway.parent_refs)
        ways.append(f"an HTTPRoute attaches it to Gateway {gateways}")
    if not ways:
        return None
    return SpecProblem(
        "OpenEndpoint",
        "the fleet serves anyone without an API key (spec.access.mode Open) and "
        f"{' and '.join(ways)}: set spec.access.mode to Tenants and declare Tenants",
    )


def _rayservice_ready(rs: dict[str, Any]) -> tuple[bool, str]:
    """Whether KubeRay reports the RayService serving this spec, and why not."""
    status = rs.get("status") or {}
    generation = (rs.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False, "KubeRay has not yet observed the latest RayService spec"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready")
    if ready is not None:
        if ready.get("status") == "True":
            return True, ""
        why = f"RayService not ready: {ready.get('reason', '')} {ready.get('message', '')}"
        pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
        if pending:  # KubeRay's RayCluster status (its head Pod, its workers) says more
            why = f"{why.strip()}; KubeRay is starting RayCluster {pending}"
        return False, why.strip()
    if status.get("serviceStatus") == "Running":
        return True, ""
    return False, "waiting for KubeRay to start the Ray cluster and Serve application"


def _upgrade_in_progress(rs: dict[str, Any]) -> str:
    """Why KubeRay is rolling out a new RayCluster while the active one serves, or ''."""
    status = rs.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "UpgradeInProgress" and c.get("status") == "True":
            pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
            into = f" into RayCluster {pending}" if pending else ""
            detail = f": {c['message']}" if c.get("message") else ""
            return f"KubeRay is rolling out the new spec{into}{detail}; the active cluster serves"
    return ""


def _app_status(rs: dict[str, Any] | None, app: str) -> dict[str, Any]:
    if not rs:
        return {}
    active = (rs.get("status") or {}).get("activeServiceStatus") or {}
    return dict((active.get("applicationStatuses") or {}).get(app) or {})


def model_statuses(
    fleet: ModelFleet,
    app: dict[str, Any],
    plans: list[ModelDeploymentPlan],
    refusals: dict[str, str] | None = None,
) -> list[ModelStatus]:
    """Per-model replicas: desired from the plan, ready where Ray Serve reports HEALTHY; a
    model served outside the fleet has state EXTERNAL (or why its key is refused); a model
    whose LoRA store credentials are refused says why in its state."""
    deployments = app.get("serveDeploymentStatuses") or {}
    by_model = {p.model: p for p in plans}
    out = []
    for m in fleet.spec.models:
        if m.is_external:  # served outside the fleet: no replicas of ours
            why = (refusals or {}).get(m.name, EXTERNAL)
            out.append(ModelStatus(name=m.name, tier=m.tier, state=why))
            continue
        plan = by_model.get(m.name)
        desired = plan.replicas.initial if plan else 0
        state = (deployments.get(model_deployment_name(m.name)) or {}).get("status")
        out.append(
            ModelStatus(
                name=m.name,
                tier=m.tier,
                desired_replicas=desired,
                ready_replicas=desired if state == HEALTHY else 0,
                state=(refusals or {}).get(m.name, state),
            )
        )
    return out


def cost_per_hour(fleet: ModelFleet, models: list[ModelStatus]) -> Decimal:
    """What the fleet's desired replicas cost per hour (replicas bill while they start)."""
    price = {t.name: Decimal(t.cost_per_replica_hour) for t in fleet.spec.tiers}
    return sum((price.get(m.tier, Decimal(0)) * m.desired_replicas for m in models), Decimal(0))


def fleet_status(
    fleet: ModelFleet, seen: FleetObservation, previous: ModelFleetStatus | None, now: datetime
) -> ModelFleetStatus:
    """The fleet's status for what was observed."""
    gen = fleet.metadata.generation
    conds: list[Condition] = list(previous.conditions) if previous else []

    def put(type: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(
            conds, type=type, status=ok, reason=reason, message=message, generation=gen, now=now
        )

    # RouterReady
    strategy = seen.policy.spec.strategy if seen.policy else None
    if strategy == "static":
        put(ROUTER_READY, True, "StaticOrder", "models are ranked in the policy's static order")
    elif seen.artifact_checksum:
        put(
            ROUTER_READY,
            True,
            "ArtifactServed",
            f"serving router artifact {seen.artifact_checksum}",
        )
    elif seen.policy is None:
        put(ROUTER_READY, False, "RoutingPolicyNotFound", "no routing policy to route with")
    else:
        put(
            ROUTER_READY,
            False,
            "WaitingForRouterFit",
            seen.router_waiting or "waiting for the routing policy's router to be fitted",
        )

    # Exposed: a warning, whatever else holds (it is about the spec, not the cluster).
    exposure = exposure_problem(fleet)
    if exposure is not None:
        put(EXPOSED, True, exposure.reason, exposure.message)
    elif fleet.spec.access.mode == "Tenants":
        put(EXPOSED, False, "KeysRequired", "only requests bearing a tenant's API key are served")
    else:
        put(EXPOSED, False, "ClusterInternal", "the open endpoint is reachable in the cluster only")

    # Degraded: specs that cannot work, or a failed Serve application.
    app = _app_status(seen.rayservice, fleet.metadata.name)
    app_state = app.get("status")
    if seen.problem:
        put(DEGRADED, True, seen.problem.reason, seen.problem.message)
    elif app_state in ("DEPLOY_FAILED", "UNHEALTHY"):
        put(
            DEGRADED,
            True,
            "ServeApplicationUnhealthy",
            f"Ray Serve application is {app_state}: {app.get('message', '')}".strip(),
        )
    else:
        put(DEGRADED, False, "AsExpected", "")

    # Progressing and Ready
    rs_ready, why = _rayservice_ready(seen.rayservice) if seen.rayservice else (False, "")
    models = (
        model_statuses(fleet, app, seen.plans, seen.external_refusals) if seen.rayservice else []
    )
    if seen.problem:
        put(PROGRESSING, False, "Blocked", seen.problem.message)
        put(READY, False, seen.problem.reason, seen.problem.message)
    elif seen.rayservice is None:
        put(
            PROGRESSING,
            True,
            "WaitingForRouter",
            "the RayService is created once the router is ready",
        )
        put(READY, False, "WaitingForRouter", "no RayService yet")
    elif not rs_ready or app_state not in (None, "RUNNING"):
        message = why or f"Ray Serve application is {app_state}"
        put(PROGRESSING, True, "Deploying", message)
        put(READY, False, "Deploying", message)
    elif upgrading := _upgrade_in_progress(seen.rayservice):
        healthy = sum(1 for m in models if m.state in (HEALTHY, EXTERNAL))
        put(PROGRESSING, True, "Upgrading", upgrading)
        put(READY, True, "AllModelsReady", f"{healthy} of {len(models)} models healthy")
    else:
        healthy = sum(1 for m in models if m.state in (HEALTHY, EXTERNAL))
        put(PROGRESSING, False, "Deployed", "the RayService serves the current spec")
        put(READY, True, "AllModelsReady", f"{healthy} of {len(models)} models healthy")

    # A healthy model the autoscaler parked at zero replicas counts as ready: it is serving as
    # intended (its next query starts a replica).
    ready_models = sum(
        1
        for m in models
        if (m.state == HEALTHY and m.ready_replicas >= m.desired_replicas) or m.state == EXTERNAL
    )
    return ModelFleetStatus(
        observed_generation=gen,
        conditions=conds,
        endpoint=names.endpoint_url(fleet.metadata.name, fleet.metadata.namespace or "default")
        if seen.rayservice
        else None,
        ready_models=f"{ready_models}/{len(fleet.spec.models)}",
        models=models,
        cost_per_hour=f"{cost_per_hour(fleet, models):.2f}",
        effective_alpha=previous.effective_alpha if previous else None,
        router_artifact=seen.artifact_checksum,
        tenants=seen.tenants
        if seen.tenants is not None
        else (previous.tenants if previous else None),
        last_scaling=list(previous.last_scaling) if previous else [],
        # Written by the autoscaler (shoal.operator.autoscaler); a reconcile keeps it.
        autoscaler=previous.autoscaler if previous else None,
        # Written by the spend loop (shoal.operator.spend); a reconcile keeps it.
        spend=previous.spend if previous else None,
    )


def policy_status(
    policy: RoutingPolicy,
    *,
    artifact: RouterArtifactStatus | None,
    fit_error: SpecProblem | None,
    previous: RoutingPolicyStatus | None,
    now: datetime,
) -> RoutingPolicyStatus:
    """The policy's status after a fit (or a failed one)."""
    gen = policy.metadata.generation
    conds: list[Condition] = list(previous.conditions) if previous else []

    def put(type: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(
            conds, type=type, status=ok, reason=reason, message=message, generation=gen, now=now
        )

    feedback = policy.spec.feedback
    if feedback is None or not feedback.enabled or policy.spec.strategy != "cluster":
        conds = [c for c in conds if c.type != ROUTER_REFIT]  # written by the refit only
    if policy.spec.strategy == "static":
        put(FITTED, True, "NotNeeded", "the static strategy needs no fitted router")
        put(READY, True, "StaticOrder", f"ranking {', '.join(policy.spec.static_order)}")
        return RoutingPolicyStatus(observed_generation=gen, conditions=conds, artifact=None)
    if fit_error is not None:
        put(FITTED, False, fit_error.reason, fit_error.message)
        kept = " (still serving the previous artifact)" if artifact else ""
        put(READY, artifact is not None, fit_error.reason, fit_error.message + kept)
    elif artifact is not None:
        message = (
            f"{artifact.samples} samples, {artifact.clusters} clusters, "
            f"{len(artifact.models)} models"
        )
        put(FITTED, True, "Fitted", message)
        put(READY, True, "Fitted", message)
    else:
        put(FITTED, False, "Fitting", "fitting the router")
        put(READY, False, "Fitting", "fitting the router")
    return RoutingPolicyStatus(
        observed_generation=gen,
        conditions=conds,
        artifact=artifact,
        router_artifact_version=artifact.version if artifact else None,
        last_refit_time=artifact.refit_at if artifact else None,
        # Counted by the refit (shoal.operator.refit); a reconcile keeps it.
        feedback_events=previous.feedback_events
        if previous and any(c.type == ROUTER_REFIT for c in conds)
        else None,
        # Written by the refit too (a refit kept in shadow); a reconcile keeps it.
        shadow_refit=previous.shadow_refit
        if previous and any(c.type == ROUTER_REFIT for c in conds)
        else None,
    )


def metrics_conditions(
    previous: list[Condition],
    error: str | None,
    generation: int | None,
    now: datetime,
) -> list[Condition] | None:
    """``previous`` with :data:`METRICS_AVAILABLE` set from one autoscaler evaluation
    (``error``: why the metrics could not be read), or None when nothing changed (so a
    healthy fleet's status is not rewritten every evaluation)."""
    if error:
        status, reason = False, METRICS_UNAVAILABLE
        message = (
            f"the autoscaler cannot read this fleet's metrics ({error}); every model is held "
            "at its last replica count until they return"
        )
    else:
        status, reason = True, "MetricsRead"
        message = "the autoscaler reads this fleet's metrics from Prometheus"
    wanted = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    old = next((c for c in previous if c.type == METRICS_AVAILABLE), None)
    if old and (old.status, old.reason, old.message) == (wanted, reason, message):
        return None
    return set_condition(
        previous,
        type=METRICS_AVAILABLE,
        status=status,
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )
