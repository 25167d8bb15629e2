"""``shoal router learn``: replay labelled data as bandit feedback and report what it buys.

Starting from an artifact, the feedback files are streamed as requests (only the chosen
model's score is revealed; :mod:`shoal.routing.replay`), and the router refit from that
feedback is evaluated on held-out files: accuracy (mean of per-task accuracies) and cost per
query before and after, and along the way at checkpoints. The learned artifact is written
through the same pure refit the operator uses (:func:`~shoal.routing.refit.refit_artifact`),
so it loads anywhere an artifact does. Called by the CLI and by the replay study.

The report's ``offpolicy`` part measures the off-policy estimate's honesty: on the logged
events the refit did not learn from (the guard's held-out share; all events without the
guard, then in-sample), the IPS, SNIPS and doubly robust estimates of the learned and the
starting router's value and of their difference, next to the true values on the same
queries (a replay knows every model's score), and the naive reading of the log (the mean
score where the log happens to agree with the router, no propensities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing import offpolicy
from shoal.routing.evaluate import align_models
from shoal.routing.fit import score_matrices
from shoal.routing.perquery import fine_router, knn_choice
from shoal.routing.refit import posterior_quality, refit_artifact
from shoal.routing.replay import (
    Labelled,
    ReplayConfig,
    ReplayResult,
    evaluate_choice,
    replay,
    reward_model,
)
from shoal.routing.tables import TableRouter
from shoal.routing.types import Sample

#: Checkpoints (feedback events) of the learning curve, besides 0 and the whole stream.
DEFAULT_CHECKPOINTS = (100, 250, 500, 1000, 2000, 5000, 10000, 20000)


def labelled(
    samples: Sequence[Sample], vectors: npt.NDArray[Any], models: Sequence[str]
) -> Labelled:
    """Embedded samples as matrices in ``models`` order (raises on another model set)."""
    align_models(samples, models)
    q, c = score_matrices(samples, models)
    return Labelled(
        vectors=np.asarray(vectors, dtype=np.float32),
        quality=q.astype(np.float64),
        cost=c.astype(np.float64),
        tasks=tuple(s.task or "default" for s in samples),
    )


@dataclass(frozen=True)
class LearnOutcome:
    """The report (JSON-able) and the learned artifact's bytes."""

    report: dict[str, Any]
    artifact: bytes


def honesty(
    start: TableRouter, result: ReplayResult, stream: Labelled, cfg: ReplayConfig
) -> dict[str, Any]:
    """Off-policy estimates of the learned and the starting router next to the truth (the
    module docstring); empty when no event is left to estimate on."""
    rows, log = result.log.logged(held=True if cfg.guard else None)
    if len(log) < 2:
        return {}
    m = start.quality.shape[1]
    vec = stream.vectors[rows]
    learned, before = result.router, start
    new = learned.choose(vec, alpha=cfg.alpha)
    old = before.choose(vec, alpha=cfg.alpha)
    q = stream.quality[rows]
    at = np.arange(rows.size)
    table = posterior_quality(start.quality, result.feedback, cfg.prior_weight)
    rm = reward_model(start, table, vec)
    out: dict[str, Any] = {
        "events": len(log),
        "in_sample": not cfg.guard,
        "true_after": float(q[at, new].mean()),
        "true_before": float(q[at, old].mean()),
        "true_difference": float((q[at, new] - q[at, old]).mean()),
        "naive_after": offpolicy.naive(log, offpolicy.one_hot(new, m)),
    }
    for method in ("ips", "snips", "dr"):
        after = offpolicy.estimate(log, offpolicy.one_hot(new, m), method=method, reward_model=rm)
        diff = offpolicy.compare(
            log,
            offpolicy.one_hot(new, m),
            offpolicy.one_hot(old, m),
            method=method,
            reward_model=rm,
        )
        out[method] = {
            "after": after.value,
            "after_stderr": after.stderr,
            "difference": diff.value,
            "difference_lower": diff.lower(cfg.z),
            "difference_stderr": diff.stderr,
        }
    return out


def learn(
    artifact: bytes,
    stream: Labelled,
    held_out: Labelled,
    cfg: ReplayConfig,
    *,
    now: datetime,
    variants: bool = False,
    fine_clusters: Sequence[int] = (64, 128),
    knn_neighbours: Sequence[int] = (50, 200),
) -> LearnOutcome:
    """Replay ``stream`` from ``artifact``, evaluate on ``held_out``, return report and bytes.

    ``variants`` adds the per-query (kNN) and finer-cluster estimators over the same
    feedback log (:mod:`shoal.routing.perquery`) to the report.
    """
    router = TableRouter.from_artifact(artifact)
    result = replay(router, stream, held_out, cfg)
    before, after = result.curve[0], result.curve[-1]
    learned = artifact
    if result.adopted_feedback is not None:
        out = refit_artifact(
            artifact,
            result.adopted_feedback,
            prior_weight=cfg.prior_weight,
            calibration=None,
            max_regression=1.0,
            now=now,
            min_events=0,
            pessimism=cfg.pessimism,
        )
        learned = out.artifact if out.artifact is not None else artifact
    report: dict[str, Any] = {
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "cost_per_query_before": before["cost_per_query"],
        "cost_per_query_after": after["cost_per_query"],
        "events": len(result.log.rows),
        "refit_events": result.feedback.total,
        "explored": result.explored,
        "explore": cfg.explore,
        "prior_weight": cfg.prior_weight,
        "alpha": router.alpha if cfg.alpha is None else cfg.alpha,
        "curve": [
            {k: p[k] for k in ("events", "accuracy", "cost_per_query", "per_task")}
            for p in result.curve
        ],
        "share_after": after["share"],
        "pessimism": cfg.pessimism,
        "guard": cfg.guard,
        "adopted": sum(d.adopted for d in result.decisions) if cfg.guard else None,
        "guard_looks": [
            {
                "events": d.events,
                "held_out": d.held_out,
                "estimate": d.estimate,
                "lower": d.lower,
                "adopted": d.adopted,
                "true_difference": d.true_difference,
            }
            for d in result.decisions
        ],
        "offpolicy": honesty(router, result, stream, cfg),
    }
    if variants:
        extra: dict[str, Any] = {}
        for n in knn_neighbours:
            choice = knn_choice(
                result.router, result.log, stream, held_out.vectors, neighbours=n, alpha=cfg.alpha
            )
            point = evaluate_choice(choice, held_out, router.models)
            extra[f"knn_{n}"] = {k: point[k] for k in ("accuracy", "cost_per_query", "per_task")}
        for k in fine_clusters:
            fine = fine_router(
                result.router,
                result.log,
                stream,
                clusters=k,
                prior_weight=cfg.prior_weight,
                seed=cfg.seed,
            )
            point = evaluate_choice(
                fine.choose(held_out.vectors, alpha=cfg.alpha), held_out, router.models
            )
            extra[f"fine_{k}"] = {
                k2: point[k2] for k2 in ("accuracy", "cost_per_query", "per_task")
            }
        report["variants"] = extra
    return LearnOutcome(report, learned)
