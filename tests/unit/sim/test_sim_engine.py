"""The simulator's request-level engine against the step-level BatchScheduler, and the
simulator's replica lifecycle (cold starts, billing, draining, steering around cold models)."""

from __future__ import annotations

import random
from statistics import mean

import pytest

from shoal.serving.engines.latency import BatchScheduler, LatencyModel
from shoal.sim.controllers import ScheduleController
from shoal.sim.engine import ModelPool, Request
from shoal.sim.simulator import Simulator

LAT = LatencyModel(base_step_seconds=0.02, per_sequence_seconds=0.0005,
                   per_prefill_token_seconds=0.00005, max_batch=16, max_waiting=100_000)  # fmt: skip


class Fixed:
    """Routes everything to a fixed ranking."""

    def __init__(self, *models: str) -> None:
        self.models = models

    def ranked(self, topic: str, prompt: int, alpha: float) -> tuple[str, ...]:
        return self.models


def poisson(rate: float, duration: float, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        out.append(Request(len(out), t, "x", 0, rng.randint(64, 512), rng.randint(32, 128)))


def step_level(reqs: list[Request]) -> list[float]:
    """TTFT per request from BatchScheduler, stepped in virtual time."""
    sched = BatchScheduler(LAT)
    t, i = 0.0, 0
    first: dict[str, float] = {}
    while i < len(reqs) or sched.busy:
        while i < len(reqs) and reqs[i].arrival <= t:
            r = reqs[i]
            sched.submit(str(r.id), r.prompt_tokens, r.output_tokens)
            i += 1
        if not sched.busy:
            t = reqs[i].arrival
            continue
        step = sched.step()
        t += step.seconds
        for tok in step.tokens:
            if tok.index == 0:
                first[tok.request_id] = t
    return [first[str(r.id)] - r.arrival for r in reqs]


def pool(name: str = "m", cold: float = 30.0, price: float = 3.6) -> ModelPool:
    return ModelPool(name, "t", LAT, cold, price, slo_seconds=1.0)


@pytest.mark.parametrize(("rate", "tolerance"), [(1.0, 0.1), (4.0, 0.1), (6.0, 0.1), (7.0, 0.15)])
def test_request_level_timing_agrees_with_the_batch_scheduler(
    rate: float, tolerance: float
) -> None:
    """From light load to overload (queues growing without bound at 7/s): mean TTFT within
    10% (15% in overload), and the share of first tokens within a 1 s SLO within two points."""
    reqs = poisson(rate, 600.0)
    ttft_ref = step_level(reqs)
    ctl = ScheduleController("fixed", {"m": [(0.0, 1)]})
    res = Simulator([pool()], reqs, Fixed("m"), ctl, duration=600.0, alpha=1.0).run()
    ttft = [s[2] for s in res.served]
    assert len(ttft) == len(reqs)
    assert mean(ttft) == pytest.approx(mean(ttft_ref), rel=tolerance)
    within = sum(1 for x in ttft_ref if x <= 1.0) / len(reqs)
    assert res.slo_attainment == pytest.approx(within, abs=0.02)


def test_new_replicas_bill_at_once_and_serve_after_their_cold_start() -> None:
    # 1 replica, then a schedule that asks for 3 from t=60: billed from 60, serving from 90.
    reqs = poisson(1.0, 300.0)
    ctl = ScheduleController("s", {"m": [(0.0, 1), (60.0, 3), (200.0, 1)]}, interval_seconds=5)
    sim = Simulator([pool(cold=30.0)], reqs, Fixed("m"), ctl, duration=300.0, alpha=1.0)
    res = sim.run()
    # One replica all along; two more from their start (about 60) to removal (about 200).
    replica_seconds = res.cost_by_model["m"] / 3.6 * 3600
    assert replica_seconds == pytest.approx(300 + 2 * 140, abs=2 * 5 + 20)
    assert [n for _, n in res.timeline["m"]][:3] == [1, 3, 1]


def test_requests_steer_around_a_cold_model() -> None:
    reqs = poisson(2.0, 120.0)
    ctl = ScheduleController("s", {"cold": [(0.0, 0)], "warm": [(0.0, 1)]})
    res = Simulator([pool("cold"), pool("warm")], reqs, Fixed("cold", "warm"), ctl,
                    duration=120.0, alpha=1.0).run()  # fmt: skip
    assert {s[1] for s in res.served} == {"warm"}
    assert res.unserved == 0


def test_requests_for_a_model_nobody_serves_stay_unserved_and_count_as_misses() -> None:
    reqs = poisson(2.0, 60.0)
    ctl = ScheduleController("s", {"cold": [(0.0, 0)]})
    res = Simulator([pool("cold")], reqs, Fixed("cold"), ctl, duration=60.0, alpha=1.0).run()
    assert res.served == [] and res.unserved == len(reqs)
    assert res.slo_attainment == 0.0
