"""Synthetic traffic for the fleet simulator: topics, arrival-rate shapes, traces, routing.

A workload is a set of :class:`Topic` s (kinds of query: math, code, ...), each with an
arrival-rate shape over time (:class:`Constant`, :class:`Diurnal`, :class:`Bursts`,
:class:`Step`, sums of them). :func:`generate_trace` draws a deterministic trace from it
for a seed (a non-homogeneous Poisson process by thinning). Traces can also be read from JSONL
(:func:`read_trace`).

Routing uses the real router: :func:`fit_workload_router` fits a cluster-router artifact
(:func:`shoal.routing.fit_router`, with the dependency-free hashing embedder) on calibration
prompts of each topic with per-model quality and cost, and :class:`RoutingTable` ranks every
prompt of the workload's prompt pools with :class:`shoal.routing.Router` once per alpha on a
grid, so the simulator routes each request by table lookup, at the router's effective alpha.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shoal.sim.engine import Request


class RateShape(Protocol):
    """Requests per second as a function of time (seconds)."""

    def rate(self, t: float) -> float: ...

    def peak(self) -> float: ...


@dataclass(frozen=True)
class Constant:
    """A constant rate."""

    rps: float

    def rate(self, t: float) -> float:
        return self.rps

    def peak(self) -> float:
        return self.rps


@dataclass(frozen=True)
class Diurnal:
    """A daily cycle: ``low`` at the trough, ``high`` at the peak (cosine), over ``period``."""

    low: float
    high: float
    period: float = 86_400.0
    peak_at: float = 50_400.0  # 14:00

    def rate(self, t: float) -> float:
        phase = 2 * math.pi * (t - self.peak_at) / self.period
        return self.low + (self.high - self.low) * (1 + math.cos(phase)) / 2

    def peak(self) -> float:
        return self.high


@dataclass(frozen=True)
class Bursts:
    """Extra traffic of ``rps`` during each burst: linear ramp up, hold, linear ramp down."""

    rps: float
    starts: tuple[float, ...]
    hold: float
    ramp: float = 30.0

    def rate(self, t: float) -> float:
        for s in self.starts:
            if s <= t < s + 2 * self.ramp + self.hold:
                x = t - s
                if x < self.ramp:
                    return self.rps * x / self.ramp
                if x < self.ramp + self.hold:
                    return self.rps
                return self.rps * (2 * self.ramp + self.hold - x) / self.ramp
        return 0.0

    def peak(self) -> float:
        return self.rps


@dataclass(frozen=True)
class Step:
    """Extra traffic of ``rps`` from each start on at once (no ramp), decaying linearly to
    nothing over ``decay`` seconds (a link on a front page, a batch job let loose)."""

    rps: float
    starts: tuple[float, ...]
    decay: float

    def rate(self, t: float) -> float:
        for s in self.starts:
            if s <= t < s + self.decay:
                return self.rps * (1.0 - (t - s) / self.decay)
        return 0.0

    def peak(self) -> float:
        return self.rps


@dataclass(frozen=True)
class Sum:
    """The sum of several shapes."""

    parts: tuple[RateShape, ...]

    def rate(self, t: float) -> float:
        return sum(p.rate(t) for p in self.parts)

    def peak(self) -> float:
        return sum(p.peak() for p in self.parts)


@dataclass(frozen=True)
class Topic:
    """A kind of query: how it is phrased, which model answers it how well, how often."""

    name: str
    #: Phrasings; ``{i}`` is replaced by a number to make distinct prompts.
    templates: tuple[str, ...]
    #: Quality of each model on this topic, in [0, 1] (calibration data for the router).
    quality: Mapping[str, float]
    shape: RateShape
    prompt_tokens: tuple[int, int] = (64, 768)
    output_tokens: tuple[int, int] = (64, 256)

    def prompts(self, n: int, offset: int = 0) -> list[str]:
        return [self.templates[i % len(self.templates)].format(i=offset + i) for i in range(n)]


#: Prompts per topic that requests draw from (ranked once per alpha).
POOL = 24


def generate_trace(
    topics: Sequence[Topic], duration: float, seed: int, pool: int = POOL
) -> list[Request]:
    """A deterministic trace for ``seed``: Poisson arrivals per topic at its rate shape."""
    out: list[tuple[float, str, int, int, int]] = []
    for k, topic in enumerate(topics):
        rng = random.Random(seed * 1_000_003 + k)
        top = topic.shape.peak()
        if top <= 0:
            continue
        t = 0.0
        lo_p, hi_p = topic.prompt_tokens
        lo_o, hi_o = topic.output_tokens
        while True:
            t += rng.expovariate(top)
            if t >= duration:
                break
            if rng.random() * top <= topic.shape.rate(t):
                out.append(
                    (
                        t,
                        topic.name,
                        rng.randrange(pool),
                        rng.randint(lo_p, hi_p),
                        rng.randint(lo_o, hi_o),
                    )
                )
    out.sort()
    return [Request(i, *row) for i, row in enumerate(out)]


def read_trace(path: Path) -> list[Request]:
    """A trace from JSONL: ``{"t": s, "topic": ..., "prompt_tokens": n, "output_tokens": n}``
    per line (``prompt`` optional: the index of the prompt in the topic's pool)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            rows.append(
                (
                    float(d["t"]),
                    str(d["topic"]),
                    int(d.get("prompt", 0)) % POOL,
                    int(d["prompt_tokens"]),
                    int(d["output_tokens"]),
                )
            )
    rows.sort()
    return [Request(i, *row) for i, row in enumerate(rows)]


def fit_workload_router(
    topics: Sequence[Topic],
    cost_per_query: Mapping[str, float],
    alpha: float,
    seed: int = 0,
) -> bytes:
    """A router artifact fitted on calibration prompts of every topic (hashing embedder)."""
    from shoal.routing import Sample, fit_router
    from shoal.routing.embedders.hashing import HashingEmbedder

    samples = [
        Sample(prompt=p, scores=dict(t.quality), task=t.name, costs=dict(cost_per_query))
        for t in topics
        for p in t.prompts(32, offset=10_000)
    ]
    return fit_router(
        samples,
        embedder=HashingEmbedder(256),
        clusters=4 * len(topics),
        top_p=1,
        alpha=alpha,
        seed=seed,
    )


ALPHA_GRID = tuple(round(i * 0.05, 2) for i in range(21))


@dataclass
class RoutingTable:
    """Ranked models for every prompt of every topic, per alpha on :data:`ALPHA_GRID`, and
    each prompt's per-model quality in its nearest cluster (the router's own tables, which
    spillover bounds the quality drop with)."""

    ranks: dict[float, dict[str, list[tuple[str, ...]]]] = field(default_factory=dict)
    qualities: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @classmethod
    def build(cls, artifact: bytes, topics: Sequence[Topic], pool: int = POOL) -> RoutingTable:
        from shoal.routing import load_router
        from shoal.routing.embedders.hashing import HashingEmbedder

        router = load_router(artifact, embedder=HashingEmbedder(256))
        table = cls()
        prompts = {t.name: t.prompts(pool) for t in topics}
        for a in ALPHA_GRID:
            table.ranks[a] = {
                name: [tuple(d.models) for d in router.rank_many(texts, alpha=a)]
                for name, texts in prompts.items()
            }
        rows = router.quality.tolist()
        table.qualities = {
            name: [
                dict(zip(router.models, rows[d.cluster], strict=True))
                for d in router.rank_many(texts)
            ]
            for name, texts in prompts.items()
        }
        return table

    def ranked(self, topic: str, prompt: int, alpha: float) -> tuple[str, ...]:
        """Models for this prompt at ``alpha`` (rounded down to the grid), best first."""
        key = ALPHA_GRID[max(0, min(len(ALPHA_GRID) - 1, int(alpha * 20 + 1e-9)))]
        return self.ranks[key][topic][prompt]

    def quality(self, topic: str, prompt: int) -> dict[str, float] | None:
        """Each model's quality in this prompt's nearest cluster (None: not known)."""
        rows = self.qualities.get(topic)
        return rows[prompt] if rows else None
