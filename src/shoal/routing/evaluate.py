"""Evaluation: how good and how cheap are the router's choices on a labelled split.

Pure functions over matrices: ``quality`` and ``cost`` ``(n, m)`` for n queries and m
models, ``tasks`` ``(n,)``, and a choice per query. Accuracy is the mean of per-task
accuracies (as RouterDC and Avengers report it), cost the total USD over the split.
Baselines on the same split: random (the expectation of a uniform pick), each single model,
the best single model, the best model per task, and the per-query oracle (best quality, then
cheapest). :func:`evaluation_report` assembles the stable JSON document that
``shoal router eval --json`` prints (schema in docs/routing.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[Any]

#: The alpha grid of the quality/cost sweep.
ALPHA_GRID: tuple[float, ...] = tuple(round(a, 3) for a in np.linspace(0.0, 1.0, 41))
REPORT_VERSION = 1


def task_index(tasks: Sequence[str]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Sorted distinct task names and each query's index into them."""
    names = sorted(set(tasks))
    pos = {t: i for i, t in enumerate(names)}
    return names, np.array([pos[t] for t in tasks], dtype=np.int64)


def per_task_mean(values: Matrix, tasks: Sequence[str]) -> dict[str, float]:
    """Mean of ``values`` (n,) within each task."""
    names, idx = task_index(tasks)
    v = np.asarray(values, dtype=np.float64)
    return {t: float(v[idx == i].mean()) for i, t in enumerate(names)}


def summarise_choice(
    choice: Matrix, quality: Matrix, cost: Matrix, tasks: Sequence[str], models: Sequence[str]
) -> dict[str, Any]:
    """Accuracy (mean per task), per-task accuracy, total and per-query cost, model shares."""
    c = np.asarray(choice, dtype=np.int64)
    rows = np.arange(c.size)
    q = np.asarray(quality, dtype=np.float64)[rows, c]
    usd = np.asarray(cost, dtype=np.float64)[rows, c]
    per = per_task_mean(q, tasks)
    counts = np.bincount(c, minlength=len(models))
    return {
        "accuracy": float(np.mean(list(per.values()))),
        "per_task": per,
        "cost": float(usd.sum()),
        "cost_per_query": float(usd.mean()) if usd.size else 0.0,
        "share": {m: float(counts[j] / max(1, c.size)) for j, m in enumerate(models)},
    }


def baselines(
    quality: Matrix, cost: Matrix, tasks: Sequence[str], models: Sequence[str]
) -> dict[str, Any]:
    """Random, every single model, best single, best per task, and the per-query oracle.

    ``best_single`` and ``per_task_best`` pick the best models *on this split* (as the
    papers' reference points do), so they are upper bounds for fixed choices.
    """
    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    n, m = q.shape
    names, tidx = task_index(tasks)
    single = {
        model: summarise_choice(np.full(n, j), q, c, tasks, models)
        for j, model in enumerate(models)
    }
    # Best single: highest accuracy, then lowest cost.
    best_j = min(
        range(m),
        key=lambda j: (-round(single[models[j]]["accuracy"], 12), single[models[j]]["cost"]),
    )
    best = dict(single[models[best_j]], model=models[best_j])
    per_task_choice = np.zeros(n, dtype=np.int64)
    per_task_models = {}
    for i, t in enumerate(names):
        mask = tidx == i
        acc = q[mask].mean(axis=0)
        tc = c[mask].sum(axis=0)
        j = min(range(m), key=lambda j: (-round(acc[j], 12), tc[j]))
        per_task_choice[mask] = j
        per_task_models[t] = models[j]
    per_task = dict(summarise_choice(per_task_choice, q, c, tasks, models), models=per_task_models)
    # Oracle: best quality for each query, the cheapest among ties.
    oracle_choice = np.lexsort((c, -q), axis=-1)[:, 0] if m else np.zeros(n, dtype=np.int64)
    oracle = summarise_choice(oracle_choice, q, c, tasks, models)
    rand_per = {t: float(q[tidx == i].mean()) for i, t in enumerate(names)}
    random = {
        "accuracy": float(np.mean(list(rand_per.values()))),
        "per_task": rand_per,
        "cost": float(c.mean(axis=1).sum()),
        "cost_per_query": float(c.mean()) if c.size else 0.0,
    }
    return {
        "random": random,
        "best_single": best,
        "per_task_best": per_task,
        "oracle": oracle,
        "single": {
            k: {"accuracy": v["accuracy"], "cost": v["cost"], "per_task": v["per_task"]}
            for k, v in single.items()
        },
    }


def pareto(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both accuracy (higher) and cost (lower)."""
    ordered = sorted(points, key=lambda p: (p["cost"], -p["accuracy"]))
    out: list[dict[str, Any]] = []
    best = -np.inf
    for p in ordered:
        if p["accuracy"] > best + 1e-12:
            out.append(p)
            best = p["accuracy"]
    return out


def cheapest_reaching(points: Sequence[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The cheapest point whose accuracy is at least ``accuracy`` (None if none)."""
    ok = [p for p in points if p["accuracy"] >= accuracy - 1e-12]
    return min(ok, key=lambda p: p["cost"]) if ok else None


def evaluation_report(
    *,
    router: dict[str, Any],
    base: dict[str, Any],
    sweep: Sequence[dict[str, Any]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The stable JSON document of ``shoal router eval --json`` (see docs/routing.md)."""
    best = base["best_single"]
    reach = cheapest_reaching(sweep, best["accuracy"])
    return {
        "report_version": REPORT_VERSION,
        **meta,
        "router": router,
        "baselines": base,
        "sweep": list(sweep),
        "frontier": pareto(sweep),
        "reaches_best_single": None
        if reach is None
        else {
            "alpha": reach["alpha"],
            "accuracy": reach["accuracy"],
            "cost": reach["cost"],
            "cost_ratio": (reach["cost"] / best["cost"]) if best["cost"] > 0 else None,
        },
    }


def align_models(samples: Sequence[Any], models: Sequence[str]) -> None:
    """Every sample must score exactly the artifact's models; raise naming file and row."""
    from shoal.routing.data import CalibrationError

    want = set(models)
    for i, s in enumerate(samples):
        have = set(s.scores)
        if have != want:
            source, _, row = s.origin.rpartition(":") if s.origin else ("<samples>", "", str(i))
            unknown = sorted(have - want)
            absent = sorted(want - have)
            parts = []
            if unknown:
                parts.append(f"unknown models {unknown} (the artifact knows {sorted(want)})")
            if absent:
                parts.append(f"no score for the artifact's models {absent}")
            raise CalibrationError(source, row, "; ".join(parts))


def evaluate_router(
    router: Any,
    samples: Sequence[Any],
    vectors: Matrix,
    *,
    alpha: float | None = None,
    alphas: Sequence[float] = ALPHA_GRID,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a :class:`~shoal.routing.router.Router` on embedded, labelled samples.

    Returns the report of :func:`evaluation_report`: the router at ``alpha`` (default: the
    artifact's), the baselines, and the sweep over ``alphas``.
    """
    from shoal.routing.fit import score_matrices

    models = list(router.models)
    align_models(samples, models)
    quality, cost = score_matrices(samples, models)
    tasks = [s.task or "default" for s in samples]
    a = router.default_alpha if alpha is None else float(alpha)
    first = router.rank_embeddings(vectors, alpha=a)[:, 0]
    result = dict(summarise_choice(first, quality, cost, tasks, models), alpha=a)
    sweep = []
    for x in alphas:
        choice = router.rank_embeddings(vectors, alpha=float(x))[:, 0]
        s = summarise_choice(choice, quality, cost, tasks, models)
        sweep.append(
            {
                "alpha": float(x),
                "accuracy": s["accuracy"],
                "cost": s["cost"],
                "per_task": s["per_task"],
            }
        )
    base = baselines(quality, cost, tasks, models)
    info = {
        "samples": len(samples),
        "tasks": {t: tasks.count(t) for t in sorted(set(tasks))},
        "models": models,
        **(meta or {}),
    }
    return evaluation_report(router=result, base=base, sweep=sweep, meta=info)
