"""The autoscaler's durable state: read from and written to a fleet's ``status.autoscaler``.

The autoscaler keeps its decisions in the fleet's status, so that a restarted operator
renders the same replica counts and honours the same cooldowns. These pure functions turn
that status into the policy's :class:`~shoal.autoscaling.types.ModelState` s, into the fixed
replica counts the fleet's RayService is rendered with, and a decision back into status.
"""

from __future__ import annotations

from datetime import datetime

from shoal.api.v1alpha1 import ModelFleet, ModelFleetSpec
from shoal.api.v1alpha1.fleet import AutoscaledModel, AutoscalerMode, AutoscalerStatus
from shoal.autoscaling.types import FleetDecision, ModelState
from shoal.contract import replica_range


def rendered_replicas(spec: ModelFleetSpec, status: AutoscalerStatus | None) -> dict[str, int]:
    """Fixed replicas per model while the autoscaler owns them (mode Active).

    Every model gets a number (one owner per replica count): the persisted decision clamped
    to the model's current bounds, or the model's initial count when the autoscaler has not
    decided about it yet (a new model, a new fleet, or a switch from DryRun or Off).
    """
    tiers = {t.name: t for t in spec.tiers}
    decided = (
        {m.name: m.replicas for m in status.models}
        if status is not None and status.mode == "Active"
        else {}
    )
    out = {}
    for model in spec.fleet_models():
        tier = tiers[model.tier]
        span = replica_range(model, tier)
        out[model.name] = span.clamp(decided.get(model.name, span.initial))
    return out


def model_states(
    fleet: ModelFleet, mode: AutoscalerMode, ready: dict[str, int] | None = None
) -> dict[str, ModelState]:
    """The policy's view of each model before an evaluation in ``mode``.

    The replica count in force is the autoscaler's own persisted count when it was decided
    in the same mode; otherwise (first evaluation, or a mode switch) what the fleet's status
    reports as desired, or the model's initial count.
    """
    status = fleet.status
    tiers = {t.name: t for t in fleet.spec.tiers}
    auto = status.autoscaler if status else None
    same_mode = auto is not None and auto.mode == mode
    persisted = {m.name: m for m in auto.models} if auto is not None and same_mode else {}
    observed = {m.name: m.desired_replicas for m in status.models} if status else {}
    if ready is None:
        ready = {m.name: m.ready_replicas for m in status.models} if status else {}
    out = {}
    for model in fleet.spec.fleet_models():
        p = persisted.get(model.name)
        if p is not None:
            n = p.replicas
        else:
            n = observed.get(model.name, replica_range(model, tiers[model.tier]).initial)
        out[model.name] = ModelState(
            replicas=n,
            ready=ready.get(model.name) if mode == "Active" else None,
            last_scale_up=p.last_scale_up_time if p else None,
            last_change=p.last_change_time if p else None,
        )
    return out


def status_after(
    previous: AutoscalerStatus | None,
    mode: AutoscalerMode,
    decision: FleetDecision,
    now: datetime,
) -> AutoscalerStatus:
    """``status.autoscaler`` after applying (or, in DryRun, reporting) ``decision``."""
    same_mode = previous is not None and previous.mode == mode
    before = {m.name: m for m in previous.models} if previous is not None and same_mode else {}
    models = []
    for d in decision.models:
        p = before.get(d.model)
        up = p.last_scale_up_time if p else None
        changed = p.last_change_time if p else None
        if d.desired != d.current:
            changed = now
            if d.desired > d.current:
                up = now
        models.append(
            AutoscaledModel(
                name=d.model,
                replicas=d.desired,
                last_scale_up_time=up,
                last_change_time=changed,
                reason=d.reason[:1024],
            )
        )
    prefix = "dry run, nothing applied: " if mode == "DryRun" else ""
    return AutoscalerStatus(
        mode=mode,
        message=(prefix + decision.summary)[:4096],
        last_evaluation_time=now,
        budget_per_hour=f"{decision.budget_per_hour:.2f}" if decision.budget_per_hour else None,
        desired_cost_per_hour=f"{decision.cost_per_hour:.2f}",
        budget_binding=decision.budget_binding,
        models=models,
    )
