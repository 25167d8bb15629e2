"""Cascades in the simulator: the attempts they add, where they go, and what they cost."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shoal.serving.engines.latency import LatencyModel
from shoal.sim.cascade import (
    CascadeRouting,
    CascadeSpec,
    answer_time,
    cascade_trace,
    split_topic,
)
from shoal.sim.controllers import ScheduleController
from shoal.sim.engine import ModelPool, Request
from shoal.sim.simulator import Simulator

LAT = LatencyModel(base_step_seconds=0.02, per_sequence_seconds=0.0005,
                   per_prefill_token_seconds=0.00005, max_batch=16, max_waiting=100_000)  # fmt: skip


class ByAlpha:
    """The cheap ranking at alpha 0, the big model first at any other alpha; topic ``easy``
    is served by the small model whatever the alpha (nothing to escalate to)."""

    def ranked(self, topic: str, prompt: int, alpha: float) -> tuple[str, ...]:
        if topic == "easy" or alpha == 0.0:
            return ("small", "mid", "big")
        return ("big", "mid", "small")


def trace(n: int = 400, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(2.0)
        topic = "easy" if i % 4 == 0 else "hard"
        out.append(Request(i, t, topic, i % 7, rng.randint(64, 512), rng.randint(32, 128)))
    return out


TIMERS = {m: answer_time(LAT) for m in ("small", "mid", "big")}


def test_a_cascade_adds_voters_at_once_and_escalations_after_the_first_answer() -> None:
    reqs = trace()
    spec = CascadeSpec({"hard": 0.25}, voters=1, seed=3)
    attempts, load = cascade_trace(reqs, spec, ByAlpha(), TIMERS, alpha=0.7)
    hard = [r for r in reqs if r.topic == "hard"]
    roles = Counter(split_topic(a.topic)[1] for a in attempts)
    assert roles["first"] == len(reqs)
    assert roles["voter"] == len(hard) == load.voter_calls
    assert roles["escalated"] == load.escalated
    assert 0.15 * len(hard) < load.escalated < 0.35 * len(hard)
    assert load.attempts == len(attempts) == len(reqs) + load.voter_calls + load.escalated
    assert [a.arrival for a in attempts] == sorted(a.arrival for a in attempts)
    # An escalation is the same query again, sent when the cheap model's whole answer is in.
    by_key = {(r.topic, r.prompt, r.prompt_tokens, r.output_tokens): r for r in reqs}
    waits = []
    for a in attempts:
        base, role, _ = split_topic(a.topic)
        if role == "escalated":
            first = by_key[(base, a.prompt, a.prompt_tokens, a.output_tokens)]
            wait = a.arrival - first.arrival
            assert wait == pytest.approx(TIMERS["small"](a.prompt_tokens, a.output_tokens))
            waits.append(wait)
    assert load.added_latency_mean == pytest.approx(sum(waits) / len(waits))
    assert load.added_latency_p95 >= load.added_latency_mean > 0
    extra = [a for a in attempts if split_topic(a.topic)[1] != "first"]
    assert load.extra_prompt_tokens == sum(a.prompt_tokens for a in extra)
    assert load.extra_output_tokens == sum(a.output_tokens for a in extra)


def test_cascade_routing_sends_each_attempt_to_its_model() -> None:
    routing = CascadeRouting(ByAlpha())
    assert routing.ranked("hard", 0, 0.7)[0] == "small"
    assert routing.ranked("hard\x00voter1", 0, 0.7)[0] == "mid"
    assert routing.ranked("hard\x00escalated", 0, 0.7)[0] == "big"


def test_the_simulator_serves_the_cascades_load_where_it_goes() -> None:
    reqs = trace()
    attempts, load = cascade_trace(
        reqs, CascadeSpec(0.5, voters=0, seed=1), ByAlpha(), TIMERS, alpha=0.7
    )
    pools = [ModelPool(m, "t", LAT, 30.0, 1.0, slo_seconds=1.0) for m in ("small", "mid", "big")]
    ctl = ScheduleController("fixed", {m: [(0.0, 1)] for m in ("small", "mid", "big")})
    res = Simulator(
        pools, attempts, CascadeRouting(ByAlpha()), ctl, duration=400.0, alpha=0.7
    ).run()
    served = Counter(s[1] for s in res.served)
    # Without a cascade the hard queries would all go to the big model; with it, every query
    # goes to the small one first and only the escalated share reaches the big one.
    assert served["small"] == len(reqs)
    assert served["big"] == load.escalated
    assert served["mid"] == 0
    assert res.unserved == 0
