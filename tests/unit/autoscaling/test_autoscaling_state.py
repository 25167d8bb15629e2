"""The autoscaler's durable state in status.autoscaler: what is rendered, what the policy
sees, and what a decision leaves behind."""

from __future__ import annotations

from datetime import timedelta

from autoscaling_builders import NOW, metrics, spec, window

from shoal.api.v1alpha1 import ModelFleet
from shoal.api.v1alpha1.fleet import AutoscaledModel, AutoscalerStatus
from shoal.autoscaling.policy import decide
from shoal.autoscaling.state import model_states, rendered_replicas, status_after

EARLIER = NOW - timedelta(minutes=10)


def active(**replicas: int) -> AutoscalerStatus:
    return AutoscalerStatus(
        mode="Active",
        models=[AutoscaledModel(name=k, replicas=v, last_change_time=EARLIER)
                for k, v in replicas.items()],
    )  # fmt: skip


def test_rendered_replicas_give_every_model_a_number_within_its_bounds() -> None:
    fleet = spec()
    assert rendered_replicas(fleet, None) == {"a": 1, "b": 1}  # initial counts
    assert rendered_replicas(fleet, active(a=5)) == {"a": 5, "b": 1}
    assert rendered_replicas(fleet, active(a=50, b=0)) == {"a": 8, "b": 1}  # clamped
    dry = active(a=5).model_copy(update={"mode": "DryRun"})
    assert rendered_replicas(fleet, dry) == {"a": 1, "b": 1}  # DryRun decisions never render


def fleet_with(status: dict[str, object]) -> ModelFleet:
    return ModelFleet.model_validate(
        {"metadata": {"name": "f", "namespace": "ns"}, "spec": spec().to_k8s(), "status": status}
    )


def test_model_states_read_the_persisted_decision_of_the_same_mode() -> None:
    status = {
        "models": [{"name": "a", "tier": "small", "desiredReplicas": 2, "readyReplicas": 1},
                   {"name": "b", "tier": "small", "desiredReplicas": 3, "readyReplicas": 3}],
        "autoscaler": active(a=4).to_k8s(),
    }  # fmt: skip
    states = model_states(fleet_with(status), "Active")
    assert states["a"].replicas == 4 and states["a"].last_change == EARLIER
    assert states["a"].ready == 1
    assert states["b"].replicas == 3  # not decided yet: what the status says runs
    dry = model_states(fleet_with(status), "DryRun")  # a mode switch starts from what runs
    assert dry["a"].replicas == 2 and dry["a"].ready is None


def test_status_after_keeps_cooldown_times_and_reasons() -> None:
    fleet = spec()
    prev = active(a=2, b=1)
    states = model_states(fleet_with({"autoscaler": prev.to_k8s()}), "Active")
    decision = decide(fleet, states, window(a=metrics(20), b=metrics(1)), NOW)
    out = status_after(prev, "Active", decision, NOW)
    a, b = out.models
    assert (a.replicas, a.last_change_time, a.last_scale_up_time) == (5, NOW, NOW)
    assert (b.replicas, b.last_change_time, b.last_scale_up_time) == (1, EARLIER, None)
    assert a.reason.startswith("scale up to 5")
    assert out.message.startswith("$6.00/h") and out.desired_cost_per_hour == "6.00"
    dry = status_after(None, "DryRun", decision, NOW)
    assert dry.message.startswith("dry run, nothing applied: ")
