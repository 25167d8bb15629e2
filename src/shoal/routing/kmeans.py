"""Deterministic spherical k-means (cosine k-means) in numpy, for clustering calibration
prompts. k-means++ seeding from a seeded generator, a few restarts, Lloyd iterations on
L2-normalised vectors; the best restart by within-cluster similarity wins. Pure: the same
input and seed always give the same centroids and labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def _normalise(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = (x / np.maximum(n, 1e-12)).astype(np.float32)
    return out


def _seed_plus_plus(x: npt.NDArray[np.float32], k: int, rng: np.random.Generator) -> Any:
    n = x.shape[0]
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    centers[0] = x[rng.integers(n)]
    d2 = np.maximum(0.0, 2.0 - 2.0 * (x @ centers[0]))
    for i in range(1, k):
        total = float(d2.sum())
        j = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=d2 / total))
        centers[i] = x[j]
        d2 = np.minimum(d2, np.maximum(0.0, 2.0 - 2.0 * (x @ centers[i])))
    return centers


def spherical_kmeans(
    x: npt.NDArray[Any], k: int, *, seed: int = 0, n_init: int = 3, max_iter: int = 100
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Cluster the rows of ``x`` into ``k`` groups by cosine similarity.

    Returns unit-norm centroids ``(k, d)`` and labels ``(n,)``. ``k`` is capped at the
    number of distinct rows; an empty cluster is re-seeded with the worst-fitting point.
    """
    xs = _normalise(np.asarray(x, dtype=np.float32))
    n = xs.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(np.unique(xs.round(6), axis=0)))
    rng = np.random.default_rng(seed)
    best: tuple[float, Any, Any] | None = None
    for _ in range(max(1, n_init)):
        c = _seed_plus_plus(xs, k, rng)
        labels = np.full(n, -1, dtype=np.int64)
        for _it in range(max_iter):
            sims = xs @ c.T
            new = sims.argmax(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            best_sim = sims[np.arange(n), labels]
            for j in range(k):
                members = labels == j
                if members.any():
                    c[j] = xs[members].sum(axis=0)
                else:  # re-seed an empty cluster with the point that fits worst
                    far = int(best_sim.argmin())
                    c[j] = xs[far]
                    labels[far] = j
                    best_sim[far] = 1.0
            c = _normalise(c)
        labels = (xs @ c.T).argmax(axis=1)
        score = float((xs @ c.T)[np.arange(n), labels].sum())
        if best is None or score > best[0] + 1e-9:
            best = (score, c.copy(), labels.copy())
    assert best is not None
    return best[1], best[2]
