"""The autoscaler's actuator: evaluate a fleet, persist the decision, render it, report it.

Called for every fleet by the operator's periodic loop (:mod:`shoal.operator.resync`), about
every ``SHOAL_AUTOSCALER_INTERVAL_SECONDS``. One evaluation:

1. reads the fleet's metrics window from Prometheus (:mod:`shoal.autoscaling.prometheus`);
2. asks the pure policy (:func:`shoal.autoscaling.policy.decide`) for every model's replicas,
   the budget's verdict and the router's effective alpha;
3. writes the decision into the fleet's status (``status.autoscaler``: mode, per-model
   replicas, cooldown times and reasons; ``status.lastScaling`` per tier;
   ``status.effectiveAlpha``), posts an event per change and updates Prometheus metrics;
4. in mode ``Active``, reconciles the fleet, whose plan reads the persisted replicas back
   (:func:`shoal.autoscaling.state.rendered_replicas`) as fixed ``num_replicas``.

One owner per replica count: in ``Active`` mode Shoal's autoscaler owns every model's count
and Ray Serve's autoscaling is off; in ``Off`` and ``DryRun`` modes the RayService keeps Ray
Serve's ``autoscaling_config`` within the tier bounds and this module never changes replicas.

Because the decision lives in status, a restarted operator renders the same replicas and
honours the same cooldowns. Reconciles of the same fleet are serialised with the autoscaler
and the finalizer (:class:`shoal.operator.locks.FleetLocks`) and read the fleet fresh, so a
reconcile working from a stale copy can never roll a decision back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import kopf

from shoal.api.v1alpha1 import API_VERSION, Condition, ConditionStatus, ModelFleet, RoutingPolicy
from shoal.api.v1alpha1.fleet import ScalingDecision
from shoal.autoscaling.policy import bridge_takers, decide
from shoal.autoscaling.prometheus import PrometheusSource, Windows, windows_for
from shoal.autoscaling.state import model_states, rendered_replicas, status_after
from shoal.autoscaling.types import FleetDecision, MetricsWindow, ModelDecision
from shoal.operator import events
from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import autoscaler_off_status, reconcile_fleet
from shoal.operator.gateway import KubeGateway
from shoal.operator.metrics import (
    BUDGET_BINDING,
    BUDGET_UTILISATION,
    DECISIONS,
    DESIRED,
    EFFECTIVE_ALPHA,
    EVALUATIONS,
)
from shoal.planning.conditions import condition
from shoal.planning.status import METRICS_AVAILABLE, METRICS_UNAVAILABLE, metrics_conditions

log = logging.getLogger(__name__)


class MetricsSource(Protocol):
    """Where metric windows come from (Prometheus in a cluster, a fake in tests)."""

    def collect(
        self,
        namespace: str,
        fleet: str,
        models: list[str],
        now: datetime,
        windows: Windows | None = None,
    ) -> MetricsWindow: ...


@dataclass
class AutoscalerRuntime:
    """Per-operator autoscaler state: where metric windows come from."""

    config: OperatorConfig
    source: MetricsSource | None = None

    @classmethod
    def from_config(cls, config: OperatorConfig) -> AutoscalerRuntime:
        source = PrometheusSource(config.prometheus_url) if config.prometheus_url else None
        return cls(config=config, source=source)


def runtime(memo: Any) -> AutoscalerRuntime:
    """The operator's autoscaler runtime, which the startup handler puts in kopf's memo."""
    rt: AutoscalerRuntime = memo.autoscaler
    return rt


@dataclass(frozen=True)
class AutoscaleOutcome:
    """What one evaluation did."""

    mode: str
    decision: FleetDecision | None
    applied: bool
    message: str


def _policy_alpha(gw: KubeGateway, fleet: ModelFleet) -> Decimal | None:
    ns = fleet.metadata.namespace or "default"
    raw = gw.get(API_VERSION, RoutingPolicy.KIND, ns, fleet.spec.routing_policy_ref.name)
    if raw is None:
        return None
    policy = RoutingPolicy.model_validate(raw)
    return Decimal(policy.spec.alpha) if policy.spec.strategy == "cluster" else None


def _last_scaling(
    previous: list[ScalingDecision], changes: list[ModelDecision], now: datetime, dry_run: bool
) -> list[ScalingDecision]:
    """``status.lastScaling`` with the biggest change of each tier that changed."""
    by_tier = {d.tier: d for d in previous}
    for tier in dict.fromkeys(c.tier for c in changes):
        biggest = max(
            (c for c in changes if c.tier == tier), key=lambda c: abs(c.desired - c.current)
        )
        prefix = "dry run, not applied: " if dry_run else ""
        by_tier[tier] = ScalingDecision(
            tier=tier,
            time=now,
            model=biggest.model,
            from_replicas=biggest.current,
            to_replicas=biggest.desired,
            reason=(prefix + biggest.reason)[:1024],
        )
    return [by_tier[t] for t in sorted(by_tier)]


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True)


def _report(body: Any, fleet: ModelFleet, mode: str, decision: FleetDecision, was: Any) -> None:
    """Events and metrics for one evaluation."""
    ns, name = fleet.metadata.namespace or "default", fleet.metadata.name
    for d in decision.models:
        DESIRED.labels(ns, name, d.model, mode).set(d.desired)
        DECISIONS.labels(ns, name, d.direction, mode).inc()
        if d.direction == "hold":
            continue
        verb = {"up": "ScaledUp", "down": "ScaledDown"}[d.direction]
        if mode == "DryRun":
            verb = "Would" + verb.replace("Scaled", "Scale")
        message = f"{d.model}: {d.current} -> {d.desired} replicas: {d.reason}"
        events.post(body, warning=d.budget_limited, reason=verb, message=message)
    util = decision.budget_utilisation
    if util is not None:
        BUDGET_UTILISATION.labels(ns, name).set(util)
    BUDGET_BINDING.labels(ns, name).set(1 if decision.budget_binding else 0)
    if decision.effective_alpha is not None:
        EFFECTIVE_ALPHA.labels(ns, name).set(float(decision.effective_alpha))
    was_binding = bool(was and was.budget_binding)
    if decision.budget_binding and not was_binding:
        events.post(body, warning=True, reason="BudgetBinding", message=decision.summary)
    elif was_binding and not decision.budget_binding:
        events.post(body, warning=False, reason="BudgetReleased", message=decision.summary)


def _report_metrics(body: Any, error: str | None, was: Condition | None) -> None:
    """A Warning event when the fleet's metrics go missing, a Normal one when they return."""
    if error:
        message = f"metrics unavailable ({error}): replicas held at their last counts"
        events.post(body, warning=True, reason=METRICS_UNAVAILABLE, message=message)
    elif was is not None and was.status != ConditionStatus.TRUE:
        message = "metrics readable again: the autoscaler resumes"
        events.post(body, warning=False, reason="MetricsRead", message=message)


def _off(
    gw: KubeGateway, config: OperatorConfig, body: Any, fleet: ModelFleet, now: datetime
) -> AutoscaleOutcome:
    """Autoscaler off: say so in status (once), hand replicas back to Ray Serve."""
    previous = fleet.status.autoscaler if fleet.status else None
    off = autoscaler_off_status(config)
    message = off.message
    patch: dict[str, Any] = {}
    if previous is None or previous.mode != "Off" or previous.message != message:
        patch["autoscaler"] = _dump(off)
    if fleet.status and fleet.status.effective_alpha is not None:
        patch["effectiveAlpha"] = None
    conditions = list(fleet.status.conditions) if fleet.status else []
    if any(c.type == METRICS_AVAILABLE for c in conditions):
        patch["conditions"] = [_dump(c) for c in conditions if c.type != METRICS_AVAILABLE]
    if not patch:
        return AutoscaleOutcome("Off", None, False, message)
    ns = fleet.metadata.namespace or "default"
    live = gw.patch_status(API_VERSION, ModelFleet.KIND, ns, fleet.metadata.name, patch)
    EVALUATIONS.labels("off").inc()
    if previous is not None and previous.mode == "Active" and live is not None:
        _reconcile(gw, config, live, now)
    return AutoscaleOutcome("Off", None, False, message)


def _reconcile(gw: KubeGateway, config: OperatorConfig, live: Any, now: datetime) -> bool:
    try:
        reconcile_fleet(gw, config, live, now)
        return True
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        # The decision is in status; the fleet's own reconcile renders it once it can.
        log.info("fleet %s not reconciled after scaling: %s", live["metadata"]["name"], exc)
        return False


def autoscale_fleet(
    gw: KubeGateway,
    config: OperatorConfig,
    source: MetricsSource | None,
    body: Any,
    now: datetime,
) -> AutoscaleOutcome:
    """Evaluate one fleet; persist, apply (Active) or only report (DryRun) the decision."""
    fleet = ModelFleet.model_validate(dict(body))
    mode = config.autoscaler_mode
    if mode == "Off" or source is None:
        return _off(gw, config, body, fleet, now)
    names = [m.name for m in fleet.spec.models]
    windows = windows_for(
        fleet.spec, config.autoscaler_interval_seconds, config.autoscaler_burst_window_seconds
    )
    window = source.collect(
        fleet.metadata.namespace or "default", fleet.metadata.name, names, now, windows
    )
    EVALUATIONS.labels("metrics_unavailable" if window.error else "ok").inc()
    status = fleet.status
    previous = status.autoscaler if status else None
    prev_alpha = (
        Decimal(status.effective_alpha)
        if mode == "Active" and status and status.effective_alpha
        else None
    )
    decision = decide(
        fleet.spec,
        model_states(fleet, mode),
        window,
        now,
        settings=config.policy_settings(),
        budget=config.default_budget,
        policy_alpha=_policy_alpha(gw, fleet),
        previous_alpha=prev_alpha,
        spill_takers=bridge_takers(fleet.spec, window.spill_takers),
    )
    auto = status_after(previous, mode, decision, now)
    patch: dict[str, Any] = {"autoscaler": _dump(auto)}
    had = list(status.conditions) if status else []
    conditions = metrics_conditions(had, window.error, fleet.metadata.generation, now)
    if conditions is not None:
        patch["conditions"] = [_dump(c) for c in conditions]
        _report_metrics(body, window.error, condition(had, METRICS_AVAILABLE))
    changes = decision.changes
    if changes:
        patch["lastScaling"] = [
            _dump(d)
            for d in _last_scaling(
                list(status.last_scaling) if status else [], changes, now, mode == "DryRun"
            )
        ]
    alpha = f"{decision.effective_alpha:.2f}" if decision.effective_alpha is not None else None
    if mode == "Active":
        patch["effectiveAlpha"] = alpha
    ns = fleet.metadata.namespace or "default"
    live = gw.patch_status(API_VERSION, ModelFleet.KIND, ns, fleet.metadata.name, patch)
    _report(body, fleet, mode, decision, previous)

    applied = False
    if mode == "Active" and live is not None:
        before = rendered_replicas(fleet.spec, previous)
        after = rendered_replicas(fleet.spec, auto)
        old_alpha = status.effective_alpha if status else None
        switched = previous is None or previous.mode != "Active"
        if switched or before != after or old_alpha != alpha:
            applied = _reconcile(gw, config, live, now)
    elif live is not None and previous is not None and previous.mode == "Active":
        _reconcile(gw, config, live, now)  # DryRun after Active: hand replicas back to Ray
    return AutoscaleOutcome(mode, decision, applied, decision.summary)
