"""The autoscaling policy on crafted metric windows: each rule, each edge, and the budget."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from autoscaling_builders import NOW, metrics, spec, window

from shoal.autoscaling.policy import PolicySettings, decide
from shoal.autoscaling.types import MetricsWindow, ModelMetrics, ModelState


def one(
    n: int,
    m: ModelMetrics | None,
    *,
    fleet=None,  # type: ignore[no-untyped-def]
    settings: PolicySettings | None = None,
    **state: object,
):  # type: ignore[no-untyped-def]
    """Decision for model ``a`` at ``n`` replicas (``b`` idle at 1)."""
    fleet = fleet or spec()
    states = {"a": ModelState(replicas=n, **state), "b": ModelState(replicas=1)}  # type: ignore[arg-type]
    models = {"b": metrics(0)}
    if m is not None:
        models["a"] = m
    chosen = settings or PolicySettings()
    return decide(fleet, states, window(**models), NOW, settings=chosen).by_model()["a"]


#: The policy without the backlog that piles up while replicas start (sizing alone).
NO_COLD_START = PolicySettings(cold_start_seconds=0)


# --- scale up ---------------------------------------------------------------------------------


def test_load_asks_for_ceil_in_flight_over_target() -> None:
    d = one(1, metrics(13))
    assert (d.current, d.desired, d.direction) == (1, 4, "up")
    assert "13.0 requests in flight need 4 replicas at 4 each" in d.reason


def test_slo_breach_adds_one_replica_where_replicas_are_busy() -> None:
    d = one(2, metrics(7.5, ttft=1.8))  # 7.5 in flight of 8 at target: busy
    assert d.desired == 3
    assert "TTFT p95 1800ms over the SLO 1000ms" in d.reason
    queued = one(2, metrics(3, ttft=1.8, waiting=2.0))
    assert queued.desired == 3


def test_slo_breach_on_idle_replicas_is_no_reason_to_pay_for_more() -> None:
    d = one(2, metrics(1, ttft=1.8))  # the model's own TTFT floor, not load
    assert d.desired == 2
    assert d.reason == "holding at 2: TTFT p95 1800ms over the SLO 1000ms, replicas not busy"


def test_a_queue_is_sized_by_throughput_not_by_its_length() -> None:
    # Without a service time: 2 replicas saturated (8 running), 92 queued; arrivals 2.5x
    # completions.
    m = metrics(100, waiting=92.0, request_rate=2.0, demand_rate=5.0, ttft=3.0)
    d = one(2, m)
    assert d.desired == 5  # ceil(8 * 2.5 / 4), not ceil(100 / 4) = 25
    assert "8.0 running, 92.0 queued, arrivals at 2.5x completions" in d.reason
    capped = one(2, metrics(100, waiting=92.0, request_rate=1.0, demand_rate=50.0, ttft=3.0))
    assert capped.desired == 8  # growth counted at most 4x


def test_slo_breach_waits_for_replicas_that_are_still_starting() -> None:
    d = one(3, metrics(11, ttft=1.8), ready=2)
    assert d.desired == 3
    assert "replicas still starting" in d.reason


def test_load_beyond_pending_capacity_still_scales_up() -> None:
    d = one(3, metrics(20, ttft=1.8), ready=2)
    assert d.desired == 5


def test_rising_load_is_met_where_it_will_be_in_a_minute() -> None:
    # 10 in flight needs 3 now; rising 6/min, it will need 4 when a new replica is up.
    d = one(2, metrics(10, in_flight_trend=0.1))
    assert d.desired == 4
    assert "rising 6.0/min, need 4 replicas at 4 each within 60s" in d.reason


def test_a_small_rise_is_noise() -> None:
    # A projected rise below half a replica's target is ignored.
    assert one(3, metrics(10, in_flight_trend=0.03)).desired == 3
    # And a falling load projects nothing (scale-down has its own, slower rule).
    assert one(3, metrics(10, in_flight_trend=-1.0)).desired == 3


def test_full_kv_cache_adds_a_replica() -> None:
    d = one(2, metrics(3, kv_cache_usage=0.97))
    assert d.desired == 3 and "KV cache 97% full" in d.reason


def test_scale_up_cooldown_holds_then_releases() -> None:
    recent = NOW - timedelta(seconds=10)
    held = one(2, metrics(20), last_scale_up=recent)
    assert held.desired == 2
    assert "scale-up cooldown, 20s left" in held.reason
    later = one(2, metrics(20), last_scale_up=NOW - timedelta(seconds=31))
    assert later.desired == 5


def test_scale_up_stops_at_the_maximum() -> None:
    capped = one(6, metrics(100))
    assert capped.desired == 8 and "(the maximum)" in capped.reason
    at_max = one(8, metrics(100))
    assert at_max.desired == 8 and at_max.reason.startswith("at the maximum 8")


def test_model_bounds_override_the_tier() -> None:
    fleet = spec(
        models=[
            {"name": "a", "engine": "simulated", "tier": "small", "minReplicas": 2,
             "maxReplicas": 3},
            {"name": "b", "engine": "simulated", "tier": "small"},
        ]
    )  # fmt: skip
    assert one(2, metrics(100), fleet=fleet).desired == 3
    assert one(3, metrics(0), fleet=fleet).desired == 2  # idle, but not below its own min


# --- sizing from capacity ---------------------------------------------------------------------


def test_arrivals_and_service_time_size_the_model() -> None:
    # A replica carries 4 in flight / 2 s = 2 req/s; 9 req/s bring 18 in flight, which 7
    # replicas hold with the square-root margin (28 - 1.5 * sqrt(28) = 20.1; 6: 16.7).
    m = metrics(6, arrival_rate=9.0, service_seconds=2.0)
    d = one(1, m, settings=NO_COLD_START)
    assert (d.desired, d.direction) == (4, "up")  # at most 4x in one step
    assert "9.0 req/s arriving" in d.reason and "at 2.00 req/s each" in d.reason
    assert "(at most 4x in one step)" in d.reason
    assert one(2, m, settings=NO_COLD_START).desired == 7


def test_what_piles_up_while_new_replicas_start_is_drained_too() -> None:
    # 2 ready replicas carry 4 of the 9 req/s: for the 30 s cold start 5 req/s more pile up,
    # 150 requests to drain within 90 s (1.7 req/s): 21.3 in flight, 8 replicas, not 7.
    d = one(2, metrics(6, arrival_rate=9.0, service_seconds=2.0))
    assert d.desired == 8
    assert "150 queued to drain in 90s (150 of them arriving while replicas start)" in d.reason
    # Replicas already starting are not ready: their capacity is not there yet either.
    assert one(4, metrics(6, arrival_rate=9.0, service_seconds=2.0), ready=2).desired == 8
    # Where the ready replicas carry the arrivals nothing piles up.
    assert one(5, metrics(18, arrival_rate=9.0, service_seconds=2.0)).desired == 7


def test_a_queue_that_piled_up_while_cold_is_a_correction_not_the_size() -> None:
    # 300 queued behind 8 running; 6 req/s arrive, 2 req/s more than the 2 replicas carry
    # (60 more within the 30 s cold start); the 360 drained within 90 s ask for 4 req/s
    # more: 20 in flight at 2 s a request, 7 replicas with the margin.
    m = metrics(308, waiting=300.0, arrival_rate=6.0, service_seconds=2.0, ttft=20.0)
    d = one(2, m)
    assert d.desired == 7  # not ceil(308 / 4) = 77
    assert "360 queued to drain in 90s (60.0 of them arriving while replicas start)" in d.reason


def test_a_tier_s_replica_start_sets_what_piles_up_while_replicas_start() -> None:
    # As above, on a tier whose replicas take 120 s to serve: 240 arrive meanwhile, not 60;
    # the 540 drained within 90 s ask for 6 req/s more: 24 in flight, 8 replicas.
    tier = spec().tiers[0].model_dump(by_alias=True, exclude_none=True)
    tier["autoscaling"]["replicaStartSeconds"] = 120
    m = metrics(308, waiting=300.0, arrival_rate=6.0, service_seconds=2.0, ttft=20.0)
    d = one(2, m, fleet=spec(tiers=[tier]))
    assert "540 queued to drain in 90s (240 of them arriving while replicas start)" in d.reason
    assert d.desired == 8


def test_a_growing_queue_is_read_at_its_latest() -> None:
    # The short window's average lags a queue that grows; its latest half does not.
    m = metrics(48, waiting=20.0, latest_waiting=40.0, arrival_rate=6.0, service_seconds=2.0)
    d = one(3, m, settings=NO_COLD_START)
    assert "40.0 queued to drain in 90s" in d.reason


def test_a_step_is_sized_at_the_latest_rate_at_once() -> None:
    # The short window (30 s) averages 2 req/s before a jump with 10 req/s since: 6 req/s.
    # Its latest half (15 s) says 10, beyond three Poisson standard deviations of 6 req/s
    # over 15 s (1.9 req/s): 20 in flight at 2 s a request, 7 replicas, at the first look.
    m = metrics(12, arrival_rate=6.0, latest_arrival_rate=10.0, service_seconds=2.0)
    d = one(2, m, settings=NO_COLD_START)
    assert d.desired == 7
    assert "10.0 req/s arriving (a step: the rate of the last 15s)" in d.reason
    # A wobble within the noise is no step: 6 req/s, 12 in flight, 5 replicas.
    wobble = replace(m, latest_arrival_rate=7.5)
    assert one(2, wobble, settings=NO_COLD_START).desired == 5
    off = PolicySettings(cold_start_seconds=0, step_sigma=0)
    assert one(2, m, settings=off).desired == 5


def test_stepped_rate_needs_the_rise_beyond_poisson_noise() -> None:
    from shoal.autoscaling.policy import stepped_rate

    # sqrt(6 / 15) = 0.63 req/s: three of them are 1.9.
    assert stepped_rate(6.0, 7.8, 15.0, 3.0) is None
    assert stepped_rate(6.0, 8.0, 15.0, 3.0) == 8.0
    assert stepped_rate(6.0, 5.0, 15.0, 3.0) is None  # falling is no step up
    assert stepped_rate(6.0, None, 15.0, 3.0) is None
    assert stepped_rate(6.0, 30.0, 15.0, 0.0) is None  # off
    # From no traffic, one arrival in the window counts as the rate: 3 * sqrt(1/15 / 15) = 0.2.
    assert stepped_rate(0.0, 0.1, 15.0, 3.0) is None
    assert stepped_rate(0.0, 0.3, 15.0, 3.0) == 0.3


def test_replicas_still_starting_count_as_capacity_arriving() -> None:
    # 7 in force, 2 ready: the 5 starting carry what the arrivals and the queue need.
    m = metrics(150, waiting=142.0, arrival_rate=6.0, service_seconds=2.0, ttft=20.0)
    d = one(7, m, ready=2)
    assert d.desired == 7 and d.direction == "hold"


def test_a_step_is_not_projected_but_a_ramp_is() -> None:
    from shoal.autoscaling.prometheus import rate_trend

    # Rates of four 30 s windows, newest first.
    assert rate_trend([18.0, 10.0, 3.0, 3.0], 30.0) == 0.0  # a step: in the rate already
    ramp = rate_trend([9.0, 7.0, 5.0, 3.0], 30.0)
    assert ramp == pytest.approx(2.0 / 30)
    assert rate_trend([3.1, 3.0, 2.9, 3.0], 30.0) == 0.0  # noise
    assert rate_trend([3.0, None, 3.0, 3.0], 30.0) is None
    d = one(3, metrics(12, arrival_rate=6.0, service_seconds=2.0, arrival_trend=ramp))
    assert d.desired == 7  # 6 + 4 req/s within 60 s: 20 in flight, 7 replicas with the margin
    assert "rising to 10.0 within 60s" in d.reason


def test_a_queue_is_not_projected_as_a_ramp() -> None:
    # Rising arrivals with a queue: the drain term sizes the backlog; projecting the rise
    # on top would size for it twice (a step smeared over the windows looks like a ramp).
    from shoal.autoscaling.prometheus import rate_trend

    ramp = rate_trend([9.0, 7.0, 5.0, 3.0], 30.0)
    m = metrics(17, waiting=5.0, arrival_rate=6.0, service_seconds=2.0, arrival_trend=ramp)
    d = one(3, m)
    # 6 req/s and 5 queued within 90 s: 12.1 in flight, 5 replicas with the margin.
    assert d.desired == 5
    assert "rising" not in d.reason and "5.0 queued to drain in 90s" in d.reason


def test_headroom_keeps_part_of_a_recent_swing_warm() -> None:
    m = metrics(4, peak=4, arrival_rate=2.0, service_seconds=2.0, peak_arrival_rate=10.0)
    quiet = NOW - timedelta(seconds=600)
    # 2 req/s bring 4 in flight: 3 replicas (12 - 1.5 * sqrt(12) = 6.8; 2: 3.8).
    lean = one(4, m, last_change=quiet)  # the operator's default: no headroom
    assert lean.desired == 3 and lean.direction == "down"
    tier = {
        "name": "small", "costPerReplicaHour": "1.00", "slo": {"ttftP95Milliseconds": 1000},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "targetOngoingRequests": 4,
                        "headroomPercent": 50},
    }  # fmt: skip
    # The tier keeps half the 8 req/s swing: 6 req/s, 12 in flight: 5 replicas.
    warm = one(4, m, fleet=spec(tiers=[tier]), last_change=quiet)
    assert warm.desired == 5 and "headroom for 4.0 req/s more (50% of the swing)" in warm.reason
    generous = decide(
        spec(),
        {"a": ModelState(replicas=1), "b": ModelState(replicas=1)},
        window(a=m, b=metrics(0)),
        NOW,
        settings=PolicySettings(headroom_percent=100),
    ).by_model()["a"]
    assert generous.desired == 4  # at most 4x in one step
    assert "headroom for 8.0 req/s more (100%" in generous.reason


# --- hold on doubt ----------------------------------------------------------------------------


def test_stale_metrics_hold() -> None:
    d = one(2, metrics(100, age=90))
    assert d.desired == 2
    assert "metrics are 90s old (stale after 60s)" in d.reason


def test_stale_limit_is_a_setting() -> None:
    fleet = spec()
    states = {"a": ModelState(replicas=2), "b": ModelState(replicas=1)}
    w = window(a=metrics(100, age=90), b=metrics(0))
    lenient = decide(fleet, states, w, NOW, settings=PolicySettings(stale_seconds=120))
    assert lenient.by_model()["a"].desired > 2


def test_missing_metrics_hold() -> None:
    d = one(3, None)
    assert d.desired == 3 and "no engine metrics" in d.reason


def test_a_failed_source_holds_every_model() -> None:
    fleet = spec()
    states = {"a": ModelState(replicas=3), "b": ModelState(replicas=2)}
    w = MetricsWindow(collected_at=NOW, error="connection refused")
    out = decide(fleet, states, w, NOW)
    assert [(d.desired, d.direction) for d in out.models] == [(3, "hold"), (2, "hold")]
    assert all("metrics unavailable (connection refused)" in d.reason for d in out.models)


def test_out_of_bounds_counts_are_clamped_even_without_metrics() -> None:
    w = MetricsWindow(collected_at=NOW, error="down")
    fleet = spec()
    out = decide(fleet, {"a": ModelState(replicas=12), "b": ModelState(replicas=0)}, w, NOW)
    assert [d.desired for d in out.models] == [8, 1]
    assert "outside the bounds [1, 8]" in out.models[0].reason


# --- scale down -------------------------------------------------------------------------------


def test_scale_down_needs_the_peak_to_fit_with_room() -> None:
    # 2 replicas, target 4: one replica may carry 0.9 * 4 = 3.6 less 1.5 * sqrt(3.6) = 0.75
    # at peak.
    assert one(2, metrics(0.5, peak=0.7)).desired == 1
    held = one(2, metrics(0.5, peak=0.8))
    assert held.desired == 2 and "fits" in held.reason


def test_the_safety_margin_shrinks_as_replicas_pool_their_load() -> None:
    from shoal.autoscaling.policy import fewest_replicas

    s = PolicySettings(sqrt_margin=1.0)
    # Target 24: one replica holds 21.6 - 4.65 = 16.95 at peak; ten hold 216 - 14.7 = 201.3.
    assert fewest_replicas(16.9, 24, s) == 1 and fewest_replicas(17.0, 24, s) == 2
    assert fewest_replicas(201.0, 24, s) == 10 and fewest_replicas(202.0, 24, s) == 11


def test_scale_down_waits_for_the_cooldown() -> None:
    d = one(4, metrics(1), last_change=NOW - timedelta(seconds=100))
    assert d.desired == 4 and "scale-down cooldown, 20s left" in d.reason
    assert one(4, metrics(1), last_change=NOW - timedelta(seconds=121)).desired == 2


def test_scale_down_at_most_halves() -> None:
    d = one(8, metrics(0.5))
    assert d.desired == 4
    assert "scale down to 4" in d.reason


#: The last change long enough ago for any scale-down.
QUIET = NOW - timedelta(seconds=300)


def after_burst(in_flight: float, rate: float, busiest: float, **kw: float) -> ModelMetrics:
    """A model whose long window's peak (30 in flight) was a burst, now at ``rate`` req/s
    of a busiest ``busiest`` (2 s a request)."""
    return metrics(in_flight, peak=30, arrival_rate=rate, service_seconds=2.0,
                   peak_arrival_rate=busiest, **kw)  # fmt: skip


def test_replicas_held_for_a_burst_go_once_its_arrivals_fall_away() -> None:
    # 8 replicas after a burst: the long window's peak (30 in flight) was the burst and its
    # queue. Arrivals fell to 1 req/s of a busiest 8: the capacity sizing alone bounds the
    # step (1 req/s at 2 s: 2 in flight, 2 replicas with the margin), not the halving rule.
    quiet = QUIET
    fell = after_burst(2, 1.0, 8.0)
    d = one(8, fell, last_change=quiet)
    assert d.desired == 2
    assert "arrivals fell to 1.0 req/s of a busiest 8.0" in d.reason
    # Arrivals still near the busiest rate: the peak holds the replicas.
    assert one(8, after_burst(2, 5.0, 8.0), last_change=quiet).desired == 8
    # Not while the queue drains, and not within the cooldown.
    assert one(8, after_burst(4, 1.0, 8.0, waiting=2.0), last_change=quiet).desired == 8
    assert one(8, fell, last_change=NOW - timedelta(seconds=60)).desired == 8
    # Off in the settings: the halving rule and the peak as before.
    fleet = spec()
    states = {"a": ModelState(replicas=8, last_change=quiet), "b": ModelState(replicas=1)}
    off = decide(
        fleet, states, window(a=fell, b=metrics(0)), NOW,
        settings=PolicySettings(release_share=0.0),
    )  # fmt: skip
    assert off.by_model()["a"].desired == 8


def test_a_released_burst_keeps_room_for_the_rates_noise() -> None:
    # After a burst, 3 req/s over the last 30 s: 6 in flight at 2 s a request, 3 replicas.
    # One quiet 30 s window is as likely as a busy one: the release keeps capacity for two
    # Poisson standard deviations more (3.6 req/s, 7.3 in flight): 4 replicas, so that the
    # next evaluation does not have to start the one it just stopped.
    fell = after_burst(6, 3.0, 12.0)
    d = one(8, fell, last_change=QUIET)
    assert (d.desired, "need 3 replicas" in d.reason) == (4, True)
    assert "1 more for the rate's Poisson noise (2 standard deviations)" in d.reason
    bare = one(8, fell, last_change=QUIET, settings=PolicySettings(release_sigma=0))
    assert bare.desired == 3 and "Poisson noise" not in bare.reason


def test_no_scale_down_without_slo_headroom_or_with_a_queue() -> None:
    assert one(4, metrics(1, ttft=0.9)).desired == 4  # within SLO, but above 80% of it
    assert one(4, metrics(1, waiting=2.0)).desired == 4


def test_scale_down_stops_at_the_minimum() -> None:
    d = one(1, metrics(0))
    assert d.desired == 1 and d.direction == "hold"


def test_flapping_load_does_not_flap_replicas() -> None:
    """Load that swings around one replica's target never makes 2-1-2 steps."""
    fleet = spec()
    n, changes, last_change, last_up = 2, [], None, None
    for step in range(40):
        now = NOW + timedelta(seconds=15 * step)
        load = 4.4 if step % 2 else 3.4  # around target 4 of one replica
        peak = 4.4 if step else load
        states = {
            "a": ModelState(replicas=n, last_change=last_change, last_scale_up=last_up),
            "b": ModelState(replicas=1),
        }
        w = MetricsWindow(
            collected_at=now,
            models={
                "a": ModelMetrics(load, peak, 0, None, None, 0.3, None, now),
                "b": ModelMetrics(0, 0, 0, None, None, None, None, now),
            },
        )
        d = decide(fleet, states, w, now).by_model()["a"]
        if d.desired != n:
            changes.append((step, n, d.desired))
            last_change = now
            if d.desired > n:
                last_up = now
            n = d.desired
    assert changes == []  # 2 replicas carry it; the peak (4.4) never fits one at 80%


# --- scale to zero ----------------------------------------------------------------------------


def zero_fleet(scale_to_zero: bool = True):  # type: ignore[no-untyped-def]
    tier = {
        "name": "cold", "costPerReplicaHour": "2.00",
        "autoscaling": {"minReplicas": 0 if scale_to_zero else 1, "maxReplicas": 4,
                        "targetOngoingRequests": 4, "scaleToZero": scale_to_zero,
                        "scaleDownCooldownSeconds": 60},
    }  # fmt: skip
    return spec(
        tiers=[tier],
        models=[
            {"name": "a", "engine": "simulated", "tier": "cold"},
            {"name": "b", "engine": "simulated", "tier": "cold"},
        ],
    )


def test_idle_model_scales_to_zero_only_where_the_tier_allows() -> None:
    idle = metrics(0, ttft=None, request_rate=0.0, demand_rate=0.0)
    d = one(1, idle, fleet=zero_fleet())
    assert d.desired == 0 and "scale to zero" in d.reason
    assert one(1, idle, fleet=zero_fleet(scale_to_zero=False)).desired == 1
    # Some demand in the window: stays at one.
    assert one(1, metrics(0, peak=1, ttft=None), fleet=zero_fleet()).desired == 1


def test_cold_model_with_demand_scales_from_zero_at_once() -> None:
    cold = ModelMetrics(demand_rate=0.4)  # no engine metrics: there is no engine
    d = one(0, cold, fleet=zero_fleet(), last_scale_up=NOW - timedelta(seconds=1))
    assert d.desired == 1 and "routed to it while cold" in d.reason
    assert one(0, None, fleet=zero_fleet()).desired == 0


# --- budget and alpha -------------------------------------------------------------------------


def budget_fleet(cap: str = "6.00") -> object:
    tiers = [
        {"name": "big", "costPerReplicaHour": "2.00",
         "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "targetOngoingRequests": 4}},
        {"name": "small", "costPerReplicaHour": "0.50",
         "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "targetOngoingRequests": 4}},
    ]  # fmt: skip
    models = [
        {"name": "a", "engine": "simulated", "tier": "big"},
        {"name": "b", "engine": "simulated", "tier": "small"},
    ]
    return spec(tiers=tiers, models=models, budget={"maxCostPerHour": cap, "minAlpha": "0.4"})


def test_budget_caps_the_fleet_and_says_who_lost_capacity() -> None:
    fleet = budget_fleet("6.00")
    states = {"a": ModelState(replicas=1), "b": ModelState(replicas=1)}
    # a wants 4 (8.00/h), b wants 2 (1.00/h): 9.00/h over a 6.00/h budget.
    w = window(a=metrics(16), b=metrics(8))
    out = decide(fleet, states, w, NOW, policy_alpha=Decimal("0.8"))  # type: ignore[arg-type]
    got = out.by_model()
    assert out.budget_binding
    assert out.cost_per_hour <= Decimal("6.00")
    assert out.wanted_cost_per_hour == Decimal("9.00")
    assert got["a"].budget_limited and got["a"].desired < got["a"].wanted
    assert "budget: capped at" in got["a"].reason
    assert "binds: capacity taken from a 4->" in out.summary
    # Alpha goes down in proportion (0.8 * 6 / 9 = 0.53), not below minAlpha.
    assert out.effective_alpha == Decimal("0.53")
    assert "router alpha lowered from 0.8 to 0.53" in out.summary


def test_budget_takes_the_least_needed_replica_first() -> None:
    fleet = budget_fleet("5.00")
    # Both want 2 big-tier-equivalents; a is busy per replica, b barely loaded.
    states = {"a": ModelState(replicas=2), "b": ModelState(replicas=4)}
    w = window(a=metrics(8), b=metrics(4, peak=12))
    out = decide(fleet, states, w, NOW)  # type: ignore[arg-type]
    got = out.by_model()
    # Wanted: a 2 (4.00), b stays 4 (2.00): 6.00 > 5.00. b's replicas are least needed.
    assert got["a"].desired == 2
    assert got["b"].desired == 2 and got["b"].budget_limited
    assert out.cost_per_hour == Decimal("5.00")


def test_budget_below_the_minimums_holds_the_minimums() -> None:
    fleet = budget_fleet("1.00")
    states = {"a": ModelState(replicas=3), "b": ModelState(replicas=3)}
    out = decide(fleet, states, window(a=metrics(12), b=metrics(12)), NOW)  # type: ignore[arg-type]
    assert [d.desired for d in out.models] == [1, 1]
    assert "below the cost of the minimum replicas" in out.summary


def test_default_budget_applies_without_spec_budget() -> None:
    fleet = spec()
    states = {"a": ModelState(replicas=1), "b": ModelState(replicas=1)}
    w = window(a=metrics(40), b=metrics(40))
    out = decide(fleet, states, w, NOW, budget=Decimal("6"))
    assert out.cost_per_hour == Decimal("6") and out.budget_binding
    assert out.effective_alpha is None  # no policy alpha given: nothing to lower


@pytest.mark.parametrize(
    ("previous", "wanted", "expected"),
    [
        (Decimal("0.5"), "small", Decimal("0.6")),  # well within budget: one step back up
        (Decimal("0.75"), "small", None),  # the step reaches the policy's alpha
        (Decimal("0.5"), "near", Decimal("0.5")),  # close to the budget: held
    ],
)
def test_alpha_recovers_in_steps(previous: Decimal, wanted: str, expected: Decimal | None) -> None:
    fleet = budget_fleet("6.00")
    states = {"a": ModelState(replicas=1), "b": ModelState(replicas=1)}
    # small: a 1 + b 1 = 2.50/h; near: a 2 + b 4 = 6.00/h (within 6.00, over 90% of it)
    a, b = (1, 1) if wanted == "small" else (5, 13)
    w = window(a=metrics(a), b=metrics(b))
    out = decide(
        fleet,
        states,
        w,
        NOW,
        policy_alpha=Decimal("0.8"),
        previous_alpha=previous,  # type: ignore[arg-type]
    )
    assert not out.budget_binding
    assert out.effective_alpha == expected
