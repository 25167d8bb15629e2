"""Offline replay of a labelled data set as a stream of requests with bandit feedback.

Each query of the stream is routed by the current tables; only the chosen model's true
score is revealed (as in production, where a client scores the answer it got) and counted
for the query's nearest cluster. Every ``batch`` events the quality tables are refit
(:func:`~shoal.routing.refit.posterior_quality`), as the operator does on an interval. At
the requested checkpoints the refit router is evaluated on a held-out set.

Exploration: ``greedy`` (the router's own choice), ``epsilon`` (a uniform other model with
probability ``epsilon``) or ``thompson`` (each request samples per-cluster qualities from
Beta posteriors and takes the best; it explores where the tables are uncertain). Pure
numpy over embedded queries; seeded, so a replay is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from shoal.routing import scoring
from shoal.routing.evaluate import summarise_choice
from shoal.routing.refit import Feedback, posterior_quality
from shoal.routing.tables import TableRouter

Explore = Literal["greedy", "epsilon", "thompson"]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Labelled:
    """Embedded queries with every model's quality and cost ``(n, m)`` and their tasks."""

    vectors: npt.NDArray[np.float32]
    quality: F64
    cost: F64
    tasks: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.quality.shape[0])


@dataclass(frozen=True)
class ReplayConfig:
    """How the stream is replayed."""

    prior_weight: float = 8.0
    explore: Explore = "thompson"
    epsilon: float = 0.05
    batch: int = 50
    seed: int = 0
    alpha: float | None = None
    checkpoints: tuple[int, ...] = ()


@dataclass
class FeedbackLog:
    """Every revealed event: the query's row in the stream, the model, its score, cluster."""

    rows: list[int] = field(default_factory=list)
    models: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    clusters: list[int] = field(default_factory=list)


@dataclass
class ReplayResult:
    """The learning curve, the final feedback counts and posterior, and the event log."""

    curve: list[dict[str, Any]]
    feedback: Feedback
    router: TableRouter
    log: FeedbackLog
    explored: int


def evaluate_choice(
    choice: npt.NDArray[Any], data: Labelled, models: Sequence[str]
) -> dict[str, Any]:
    """Accuracy (mean of per-task), per-task accuracy and cost per query of ``choice``."""
    s = summarise_choice(choice, data.quality, data.cost, list(data.tasks), models)
    return {k: s[k] for k in ("accuracy", "per_task", "cost", "cost_per_query", "share")}


def _thompson(
    router: TableRouter,
    fb: Feedback,
    prior: F64,
    vectors: npt.NDArray[np.float32],
    cfg: ReplayConfig,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    idx, w = router.neighbours(vectors)
    w0 = max(cfg.prior_weight, 1e-3)
    a = np.maximum(w0 * prior + fb.score_sum, 1e-3)[idx]  # (b, p, m)
    b = np.maximum(w0 * (1.0 - prior) + fb.events - fb.score_sum, 1e-3)[idx]
    q = rng.beta(a, b)
    lo, hi = q.min(axis=2, keepdims=True), q.max(axis=2, keepdims=True)
    qn = np.divide(q - lo, hi - lo, out=np.zeros_like(q), where=hi - lo > 1e-12)
    cn = scoring.minmax_rows(router.cost.astype(np.float32))[idx]
    alpha = router.alpha if cfg.alpha is None else cfg.alpha
    s = alpha * qn + (1.0 - alpha) * (1.0 - cn)
    blended = np.einsum("bp,bpm->bm", w, s)
    out: npt.NDArray[np.int64] = blended.argmax(axis=1).astype(np.int64)
    return out


def replay(
    router: TableRouter, stream: Labelled, held_out: Labelled, cfg: ReplayConfig
) -> ReplayResult:
    """Stream ``stream`` through ``router`` with bandit feedback; evaluate on ``held_out``."""
    rng = np.random.default_rng(cfg.seed)
    prior = router.quality.copy()
    k, m = prior.shape
    fb = Feedback.zeros(k, m)
    log = FeedbackLog()
    marks = sorted({c for c in cfg.checkpoints if 0 <= c <= len(stream)} | {0, len(stream)})
    curve: list[dict[str, Any]] = []
    current = router
    explored = 0

    def checkpoint(events: int) -> None:
        point = evaluate_choice(
            current.choose(held_out.vectors, alpha=cfg.alpha), held_out, router.models
        )
        curve.append({"events": events, **point})

    order = rng.permutation(len(stream))
    done = 0
    while True:
        if marks and done >= marks[0]:
            checkpoint(done)
            while marks and marks[0] <= done:
                marks.pop(0)
        if done >= len(stream):
            break
        stop = min(done + cfg.batch, len(stream), marks[0] if marks else len(stream))
        rows = order[done:stop]
        vec = stream.vectors[rows]
        if cfg.explore == "thompson":
            choice = _thompson(current, fb, prior, vec, cfg, rng)
        else:
            choice = current.choose(vec, alpha=cfg.alpha)
            if cfg.explore == "epsilon":
                flip = rng.random(rows.size) < cfg.epsilon
                other = (choice + rng.integers(1, max(m, 2), rows.size)) % m
                choice = np.where(flip, other, choice)
        greedy = current.choose(vec, alpha=cfg.alpha)
        explored += int((choice != greedy).sum())
        nearest = current.neighbours(vec)[0][:, 0]
        for r, j, c in zip(rows.tolist(), choice.tolist(), nearest.tolist(), strict=True):
            score = float(stream.quality[r, j])
            fb.add(c, j, score)
            log.rows.append(r)
            log.models.append(j)
            log.scores.append(score)
            log.clusters.append(c)
        done = stop
        current = router.with_quality(posterior_quality(prior, fb, cfg.prior_weight))
    return ReplayResult(curve, fb, current, log, explored)
