"""Pure scoring functions of the cluster router (the Avengers-Pro scheme).

Per cluster, each model's quality and cost are min-max normalised across models; a model's
score in a cluster is ``alpha * q + (1 - alpha) * (1 - c)``. A query's scores are the
softmax-weighted blend over its ``top_p`` nearest clusters (cosine similarity divided by a
temperature). Everything here is vectorised over a batch of queries and free of I/O, so the
fitter, the router and the evaluator share one definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def minmax_rows(table: npt.NDArray[Any]) -> F32:
    """Min-max normalise each row to [0, 1]; a constant row becomes all zeros."""
    t = np.asarray(table, dtype=np.float64)
    lo = t.min(axis=1, keepdims=True)
    span = t.max(axis=1, keepdims=True) - lo
    out: F32 = np.divide(t - lo, span, out=np.zeros_like(t), where=span > 1e-12).astype(np.float32)
    return out


def cluster_scores(quality_n: npt.NDArray[Any], cost_n: npt.NDArray[Any], alpha: float) -> F32:
    """Per-cluster model scores ``alpha * q + (1 - alpha) * (1 - c)`` from normalised tables."""
    check_alpha(alpha)
    q = np.asarray(quality_n, dtype=np.float32)
    c = np.asarray(cost_n, dtype=np.float32)
    return (np.float32(alpha) * q + np.float32(1.0 - alpha) * (1.0 - c)).astype(np.float32)


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise ``ValueError`` unless it is a number in [0, 1]."""
    a = float(alpha)
    if not 0.0 <= a <= 1.0 or a != a:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return a


def top_p_softmax(sims: npt.NDArray[Any], top_p: int, temperature: float) -> tuple[I64, F32]:
    """The ``top_p`` most similar clusters per row and their softmax weights.

    ``sims`` has shape ``(n, k)``. Returns indices ``(n, p)`` ordered most similar first and
    weights ``(n, p)`` that sum to 1 per row (``exp((s - s_max) / temperature)``, normalised).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    s = np.atleast_2d(np.asarray(sims, dtype=np.float32))
    p = max(1, min(int(top_p), s.shape[1]))
    if p < s.shape[1]:
        part = np.argpartition(-s, p - 1, axis=1)[:, :p]
    else:
        part = np.broadcast_to(np.arange(s.shape[1]), s.shape).copy()
    part_s = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_s, order, axis=1)
    z = np.exp((top - top[:, :1]) / np.float32(temperature))
    w = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
    return idx, w


def blend(idx: I64, weights: F32, table: npt.NDArray[Any]) -> F32:
    """Weighted sum of rows ``table[idx]``: shape ``(n, p)`` x ``(k, m)`` -> ``(n, m)``."""
    rows = np.asarray(table, dtype=np.float32)[idx]  # (n, p, m)
    out: F32 = np.einsum("np,npm->nm", weights, rows).astype(np.float32)
    return out


def rank(scores: npt.NDArray[Any], prior: npt.NDArray[Any] | None = None) -> I64:
    """Model indices per row, best first; ties broken by ``prior`` (higher first), then index."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n, m = s.shape
    pr = np.zeros(m) if prior is None else np.asarray(prior, dtype=np.float64)
    keys = (np.broadcast_to(np.arange(m), (n, m)), np.broadcast_to(-pr, (n, m)), -s)
    # Typed through a variable: numpy's stubs type lexsort differently across 2.3 and 2.4
    # (the vllm extra's mistral_common keeps numpy below 2.4).
    order: I64 = np.lexsort(keys, axis=-1).astype(np.int64)
    return order
