"""Baselines computed with hindsight: per-replica capacity, the offline-optimal schedule,
and static peak provisioning.

- :func:`capacity_curve`: how many requests per second ``n`` replicas of a model sustain
  with at least ``target`` of first tokens within the SLO (queueing theory over the latency
  model, for the model's own mix of prompt and output lengths; the replay of the schedule in
  the simulator then reports the attainment it really gets).
- :func:`hindsight_schedule`: knowing the whole trace, the fewest replicas per model in each
  slot (default one minute) that carry the slot's arrival rate with 99% of first tokens
  within the SLO, never below the model's minimum (zero only where the tier scales to zero
  and the slot has no request). Replayed with replicas started one cold start ahead of
  need (hindsight again), it is the reference "offline-optimal" cost: no reaction delay, no
  cooldowns, no guessing.
- :func:`static_schedule`: that schedule's peak per model, held all the time (static peak
  provisioning: what a fleet sized for its busiest minute costs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shoal.serving.engines.latency import LatencyModel
from shoal.sim.engine import ModelPool


@dataclass(frozen=True)
class PoolSpec:
    """Everything needed to build a fresh :class:`ModelPool`."""

    name: str
    tier: str
    latency: LatencyModel
    cold_start_seconds: float
    price_per_hour: float
    slo_seconds: float

    def make(self) -> ModelPool:
        return ModelPool(
            self.name,
            self.tier,
            self.latency,
            self.cold_start_seconds,
            self.price_per_hour,
            self.slo_seconds,
        )


def erlang_c(servers: int, load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (offered load ``load`` < c)."""
    if load <= 0:
        return 0.0
    if load >= servers:
        return 1.0
    b = 1.0  # Erlang B, computed upwards in c (numerically stable)
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    rho = load / servers
    return b / (1 - rho + rho * b)


def capacity(pool: PoolSpec, n: int, mix: Sequence[tuple[int, int]], target: float) -> float:
    """Highest arrival rate (req/s) ``n`` replicas serve with ``target`` of first tokens
    within the SLO.

    Near capacity every batch is full, so the replicas behave as ``n * max_batch`` servers
    with the service time of a request in a full batch (the latency model at
    ``max_batch``), fed from one queue: an M/G/c queue, taken as M/M/c (Erlang C), whose
    waiting-time tail is exponential. A first token is late when the wait exceeds the SLO
    less the prefill step.
    """
    lat = pool.latency
    batch = lat.max_batch
    service = sum(pool.make().timing(batch - 1, p, o)[1] for p, o in mix) / len(mix)
    step = sum(lat.ttft_seconds(p, batch - 1) for p, _ in mix) / len(mix)
    slack = pool.slo_seconds - step
    if slack <= 0:
        return 0.0
    servers = n * batch
    mu = 1.0 / service

    def late(rate: float) -> float:
        return erlang_c(servers, rate / mu) * math.exp(-(servers * mu - rate) * slack)

    lo, hi = 0.0, servers * mu
    for _ in range(40):
        mid = (lo + hi) / 2
        if late(mid) <= 1 - target:
            lo = mid
        else:
            hi = mid
    return lo


def capacity_curve(
    pool: PoolSpec, max_n: int, mix: Sequence[tuple[int, int]], target: float = 0.99
) -> list[float]:
    """``curve[n]``: capacity of ``n`` replicas for ``n`` in ``0..max_n`` (see
    :func:`capacity`)."""
    return [0.0] + [capacity(pool, n, mix, target) for n in range(1, max_n + 1)]


def replicas_for(curve: Sequence[float], rate: float) -> int:
    """Fewest replicas whose capacity covers ``rate`` (the largest curve point if none)."""
    for n, cap in enumerate(curve):
        if cap >= rate and (n > 0 or rate <= 0):
            return n
    return len(curve) - 1


def hindsight_schedule(
    arrivals: Sequence[float],
    curve: Sequence[float],
    duration: float,
    lo: int,
    hi: int,
    slot: float = 60.0,
) -> list[tuple[float, int]]:
    """Replicas per slot for one model's arrival times (see the module docstring)."""
    counts = [0] * (int(duration // slot) + 2)
    for t in arrivals:
        counts[int(t // slot)] += 1
    out: list[tuple[float, int]] = []
    s = 0.0
    while s < duration:
        a = counts[int(s // slot)]
        n = 0 if a == 0 and lo == 0 else replicas_for(curve, a / slot)
        n = min(max(n, lo, 1 if a else lo), hi)
        if not out or out[-1][1] != n:
            out.append((s, n))
        s += slot
    return out


Schedule = Mapping[str, list[tuple[float, int]]]


def static_schedule(schedule: Schedule) -> dict[str, list[tuple[float, int]]]:
    """Each model's peak count of ``schedule``, held from start to end."""
    return {m: [(0.0, max(n for _, n in s))] for m, s in schedule.items()}
