"""Fitting: calibration samples -> router artifact bytes.

Embeds the prompts, clusters them with seeded spherical k-means, and tabulates each
cluster's mean quality and mean cost per model. Cluster means are shrunk toward each model's
global mean (``(sum + s * global) / (n + s)``) so small clusters do not trust a handful of
samples; ``shrinkage`` was chosen by cross-validation on train splits (docs/routing.md).
Pure apart from the embedder call; the same samples, parameters and seed give the same
bytes (pass ``fitted_at`` to pin the timestamp too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shoal.api.v1alpha1.common import decimal
from shoal.routing.artifact import encode_artifact
from shoal.routing.data import CalibrationError, check_consistent
from shoal.routing.kmeans import spherical_kmeans
from shoal.routing.scoring import check_alpha
from shoal.routing.types import Embedder, Sample

if TYPE_CHECKING:
    from shoal.api.v1alpha1.policy import RoutingPolicySpec

#: Default shrinkage strength (pseudo-samples of the global mean per cluster).
DEFAULT_SHRINKAGE = 8.0
#: Whether samples are weighted so every task counts alike (see :func:`task_weights`).
DEFAULT_BALANCE_TASKS = False
EMBED_BATCH = 64


@dataclass(frozen=True)
class Tables:
    """Per-cluster tables of a fit: mean quality and cost ``(k, m)``, sample counts ``(k,)``."""

    quality: npt.NDArray[np.float32]
    cost: npt.NDArray[np.float32]
    counts: npt.NDArray[np.int32]


def score_matrices(
    samples: Sequence[Sample], models: Sequence[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Quality ``(n, m)`` and cost ``(n, m)`` matrices in ``models`` order (costs 0 if absent)."""
    q = np.array([[s.scores[m] for m in models] for s in samples], dtype=np.float32)
    c = np.array(
        [
            [s.costs.get(m, 0.0) for m in models] if s.costs else [0.0] * len(models)
            for s in samples
        ],
        dtype=np.float32,
    )
    return q.reshape(len(samples), len(models)), c.reshape(len(samples), len(models))


def cluster_tables(
    labels: npt.NDArray[Any],
    k: int,
    quality: npt.NDArray[Any],
    cost: npt.NDArray[Any],
    *,
    shrinkage: float = DEFAULT_SHRINKAGE,
    weights: npt.NDArray[Any] | None = None,
) -> Tables:
    """Per-cluster (weighted) means of ``quality`` and ``cost`` shrunk toward the global means.

    ``weights`` (n,) weigh samples, for example by task (:func:`task_weights`); they are
    scaled to mean 1 so ``shrinkage`` keeps its meaning in samples.
    """
    if shrinkage < 0:
        raise ValueError("shrinkage must be >= 0")
    lab = np.asarray(labels, dtype=np.int64)
    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    w = np.ones(lab.size) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.mean() if w.size else w
    onehot = np.zeros((k, lab.size))
    onehot[lab, np.arange(lab.size)] = w
    n = onehot.sum(axis=1, keepdims=True)
    gq, gc = w @ q / w.sum(), w @ c / w.sum()
    denom = np.maximum(n + shrinkage, 1e-12)
    tq = (onehot @ q + shrinkage * gq) / denom
    tc = (onehot @ c + shrinkage * gc) / denom
    empty = n[:, 0] == 0
    tq[empty], tc[empty] = gq, gc
    counts = np.bincount(lab, minlength=k).astype(np.int32)
    return Tables(tq.astype(np.float32), tc.astype(np.float32), counts)


def task_weights(tasks: Sequence[str]) -> npt.NDArray[np.float64]:
    """Weights that give every task the same total (1 / its sample count).

    Accuracy is reported as the mean of per-task accuracies, so a small task (HumanEval's 115
    prompts beside MMLU's 2,000) should count as much as a large one in a mixed cluster.
    """
    counts = Counter(tasks)
    return np.array([1.0 / counts[t] for t in tasks], dtype=np.float64)


def embed_all(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = EMBED_BATCH,
) -> npt.NDArray[np.float32]:
    """Embed ``texts`` in batches, calling ``progress(done, total)`` after each batch."""
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for start in range(0, len(texts), batch):
        chunk = list(texts[start : start + batch])
        vec = np.asarray(embedder.embed(chunk), dtype=np.float32)
        if vec.shape != (len(chunk), embedder.dim):
            raise ValueError(
                f"embedder {embedder.name} returned shape {vec.shape}, "
                f"expected {(len(chunk), embedder.dim)}"
            )
        out[start : start + len(chunk)] = vec
        if progress is not None:
            progress(start + len(chunk), len(texts))
    return out


def fit_router(
    samples: Sequence[Sample],
    *,
    embedder: Embedder,
    clusters: int = 16,
    top_p: int = 3,
    temperature: float = 0.1,
    alpha: float = 0.7,
    seed: int = 0,
    shrinkage: float = DEFAULT_SHRINKAGE,
    balance_tasks: bool = DEFAULT_BALANCE_TASKS,
    embeddings: npt.NDArray[Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    fitted_at: datetime | None = None,
) -> bytes:
    """Fit a cluster router on ``samples`` and return the artifact bytes.

    ``embeddings`` (rows aligned with ``samples``) skips the embedding step, for callers
    that cache them. Raises :class:`~shoal.routing.data.CalibrationError` on inconsistent
    samples and ``ValueError`` on bad parameters.
    """
    if not samples:
        raise CalibrationError("<samples>", None, "no calibration samples")
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    if top_p < 1:
        raise ValueError(f"top_p must be >= 1, got {top_p}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_alpha(alpha)
    models = check_consistent([("<samples>", samples)])
    quality, cost = score_matrices(samples, models)
    if embeddings is None:
        x = embed_all(embedder, [s.prompt for s in samples], progress=progress)
    else:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.shape != (len(samples), embedder.dim):
            raise ValueError(
                f"embeddings have shape {x.shape}, expected {(len(samples), embedder.dim)}"
            )
    centroids, labels = spherical_kmeans(x, clusters, seed=seed)
    k = centroids.shape[0]
    tasks = [s.task for s in samples]
    weights = task_weights(tasks) if balance_tasks and len(set(tasks)) > 1 else None
    tables = cluster_tables(labels, k, quality, cost, shrinkage=shrinkage, weights=weights)
    when = (fitted_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    header = {
        "embedder": {"name": embedder.name, "dim": int(embedder.dim)},
        "models": list(models),
        "clusters": int(k),
        "samples": len(samples),
        "fitted_at": when.isoformat(),
        "params": {
            "top_p": int(min(top_p, k)),
            "temperature": float(temperature),
            "alpha": float(alpha),
            "seed": int(seed),
            "shrinkage": float(shrinkage),
            "balance_tasks": bool(weights is not None),
            "requested_clusters": int(clusters),
        },
        "tasks": dict(sorted(Counter(s.task for s in samples).items())),
        "has_costs": bool(samples[0].costs),
    }
    arrays: dict[str, npt.NDArray[Any]] = {
        "centroids": centroids.astype(np.float16),
        "quality": tables.quality,
        "cost": tables.cost,
        "counts": tables.counts,
    }
    return encode_artifact(header, arrays)


def fit_policy_router(
    spec: RoutingPolicySpec,
    samples: Sequence[Sample],
    *,
    api_key: str | None = None,
    fitted_at: datetime | None = None,
    embedder_name: str | None = None,
) -> bytes:
    """Fit the router a ``RoutingPolicy`` spec describes: its embedder and fit parameters.

    The one place that turns the policy's fields into :func:`fit_router` arguments, for the
    operator (in a cluster) and ``shoal up`` (locally) alike. ``clusters`` is capped at the
    number of samples. ``embedder_name`` (an artifact's embedder name) replaces the policy's
    embedder: ``shoal up``'s first run on a machine fits with ``minilm-l6-int8`` until the
    static table of ``minilm-l6-static-v2`` is distilled.
    """
    from shoal.routing.embedders import embedder_for_policy, make_embedder

    embedder = (
        make_embedder(embedder_name)
        if embedder_name is not None
        else embedder_for_policy(
            spec.embedder.type,
            endpoint=spec.embedder.endpoint,
            model=spec.embedder.model,
            api_key=api_key,
        )
    )
    return fit_router(
        samples,
        embedder=embedder,
        clusters=min(spec.clusters, len(samples)),
        top_p=spec.top_p,
        temperature=float(decimal(spec.temperature)),
        alpha=float(decimal(spec.alpha)),
        seed=spec.seed,
        fitted_at=fitted_at,
    )
