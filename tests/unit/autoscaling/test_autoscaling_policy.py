"""The autoscaling policy on crafted metric windows: each rule, each edge, and the budget."""

from __future__ import annotations

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
    **state: object,
):  # type: ignore[no-untyped-def]
    """Decision for model ``a`` at ``n`` replicas (``b`` idle at 1)."""
    fleet = fleet or spec()
    states = {"a": ModelState(replicas=n, **state), "b": ModelState(replicas=1)}  # type: ignore[arg-type]
    models = {"b": metrics(0)}
    if m is not None:
        models["a"] = m
    return decide(fleet, states, window(**models), NOW).by_model()["a"]


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


# --- sizing from capacity ---------------------------------------------------------------------


def test_arrivals_and_service_time_size_the_model() -> None:
    # A replica carries 4 in flight / 2 s = 2 req/s; 9 req/s bring 18 in flight, which 7
    # replicas hold with the square-root margin (28 - 1.5 * sqrt(28) = 20.1; 6: 16.7).
    d = one(1, metrics(6, arrival_rate=9.0, service_seconds=2.0))
    assert (d.desired, d.direction) == (4, "up")  # at most 4x in one step
    assert "9.0 req/s arriving" in d.reason and "at 2.00 req/s each" in d.reason
    assert "(at most 4x in one step)" in d.reason
    assert one(2, metrics(6, arrival_rate=9.0, service_seconds=2.0)).desired == 7


def test_a_queue_that_piled_up_while_cold_is_a_correction_not_the_size() -> None:
    # 300 queued behind 8 running; 6 req/s arrive, and the queue drained within 90 s asks
    # for 3.3 req/s more: 18.7 in flight at 2 s a request, 7 replicas with the margin.
    m = metrics(308, waiting=300.0, arrival_rate=6.0, service_seconds=2.0, ttft=20.0)
    d = one(2, m)
    assert d.desired == 7  # not ceil(308 / 4) = 77
    assert "300 queued to drain in 90s" in d.reason


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
