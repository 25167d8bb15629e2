"""Spillover's bridge in the autoscaling policy: while a model's replicas start, the model that
takes its spilled requests is sized for what the ready replicas cannot carry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from autoscaling_builders import NOW, metrics, spec, window

from shoal.api.v1alpha1 import ModelFleetSpec
from shoal.autoscaling.policy import PolicySettings, bridge_takers, decide
from shoal.autoscaling.types import FleetDecision, ModelMetrics, ModelState

BRIDGE = PolicySettings(spill_bridge=1.0)

# "a" steps from 4 to 10 req/s at 2 s a request (the latest window's rate, beyond the noise):
# its 2 ready replicas carry 4 (4 in flight each / 2 s), 6 req/s more bring 12 in flight.
STEP = metrics(8, arrival_rate=4.0, latest_arrival_rate=10.0, service_seconds=2.0)


def run(
    a: ModelMetrics = STEP,
    *,
    settings: PolicySettings = BRIDGE,
    takers: dict[str, str] | None = None,
    b: ModelState | None = None,
    a_state: ModelState | None = None,
) -> FleetDecision:
    states = {"a": a_state or ModelState(replicas=2), "b": b or ModelState(replicas=1)}
    return decide(
        spec(),
        states,
        window(a=a, b=metrics(0)),
        NOW,
        settings=settings,
        spill_takers={"a": "b"} if takers is None else takers,
    )


def test_the_taker_is_sized_for_the_first_choice_s_shortfall_while_its_replicas_start() -> None:
    d = run().by_model()
    assert d["a"].desired > 2  # a's own step
    # 12 in flight at 4 each with the square-root margin: 5 replicas (20 - 1.5 * sqrt(20)).
    assert (d["b"].current, d["b"].desired, d["b"].direction) == (1, 5, "up")
    assert "spillover bridge: 12.0 in flight beyond the ready replicas of a 6.0 req/s" in (
        d["b"].reason
    )
    # Half the shortfall: 6 in flight, 3 replicas.
    assert run(settings=PolicySettings(spill_bridge=0.5)).by_model()["b"].desired == 3


def test_no_bridge_without_the_setting_or_the_takers() -> None:
    assert run(settings=PolicySettings()).by_model()["b"].desired == 1
    assert run(takers={}).by_model()["b"].desired == 1
    assert run(takers={"a": "a"}).by_model()["b"].desired == 1


def test_no_bridge_where_the_ready_replicas_carry_the_arrivals() -> None:
    steady = metrics(6, arrival_rate=3.0, latest_arrival_rate=3.2, service_seconds=2.0)
    d = run(steady, a_state=ModelState(replicas=3)).by_model()
    assert (d["a"].direction, d["b"].desired) == ("hold", 1)


def test_replicas_already_starting_keep_the_bridge_up() -> None:
    # a asked for 8 at the last look; 2 are ready: the shortfall is still there.
    d = run(a_state=ModelState(replicas=8, ready=2, last_scale_up=NOW)).by_model()
    assert (d["a"].direction, d["b"].desired) == ("hold", 5)


def test_the_taker_s_bounds_and_cooldown_apply() -> None:
    recent = ModelState(replicas=1, last_scale_up=NOW - timedelta(seconds=5))
    assert run(b=recent).by_model()["b"].desired == 1  # within its 30 s scale-up cooldown
    big = metrics(8, arrival_rate=4.0, latest_arrival_rate=40.0, service_seconds=2.0)
    assert run(big).by_model()["b"].desired == 8  # the tier's maximum
    # No scale-down below the bridge while it is needed (idle, b alone would go to 3).
    assert run(b=ModelState(replicas=6)).by_model()["b"].desired == 5
    held = run(b=ModelState(replicas=6)).by_model()["b"]
    assert held.reason.startswith("holding at 5: spillover bridge")
    assert run(settings=PolicySettings(), b=ModelState(replicas=6)).by_model()["b"].desired == 3
    # Never fewer than the taker's own decision.
    busy = metrics(30, arrival_rate=10.0, service_seconds=2.0)
    d = decide(
        spec(),
        {"a": ModelState(replicas=2), "b": ModelState(replicas=1)},
        window(a=STEP, b=busy),
        NOW,
        settings=BRIDGE,
        spill_takers={"a": "b"},
    ).by_model()["b"]
    assert d.desired == 8  # 20 in flight of its own and 12 bridged: the maximum


def _tiered(starts: dict[str, int | None]) -> ModelFleetSpec:
    """One model per tier, named after it, each tier with the start time given (None:
    unknown)."""
    tiers = []
    for name, start in starts.items():
        auto: dict[str, Any] = {"minReplicas": 1, "maxReplicas": 8}
        if start is not None:
            auto["replicaStartSeconds"] = start
        tiers.append({"name": name, "costPerReplicaHour": "1.00", "autoscaling": auto})
    models = [{"name": n, "engine": "simulated", "tier": n} for n in starts]
    return spec(models=models, tiers=tiers)


def test_only_a_faster_starting_taker_bridges() -> None:
    fleet = _tiered({"big": 30, "small": 15, "twin": 30, "unknown": None})
    measured = {"big": "small", "twin": "big", "small": "big", "unknown": "small"}
    # small starts sooner than big: it bridges; big starts no sooner than twin, nor than
    # small; a tier without a start time bridges nothing, either way.
    assert bridge_takers(fleet, measured) == {"big": "small"}
    assert bridge_takers(fleet, {"big": "unknown"}) == {}
    assert bridge_takers(fleet, {"big": "gone"}) == {}  # a taker no longer in the fleet
    assert bridge_takers(fleet, {}) == {}
