"""What a feedback log makes possible beyond the calibration's cluster tables.

Two estimators over the events of a replay (:class:`~shoal.routing.replay.FeedbackLog`),
both starting from the refit cluster posterior as their prior:

- :func:`knn_choice`: a per-query estimate near a prompt. A query's quality for a model is
  the posterior of its clusters blended with the revealed scores of the ``neighbours``
  nearest logged events that went to that model (similarity-weighted).
- :func:`fine_router`: finer clusters where feedback is dense: k-means with more clusters
  over the logged queries, each fine cluster's prior the coarse posterior at its centroid,
  its counts the events that fall in it. The result is an ordinary table router (an
  artifact can hold it).

Pure numpy over embedded queries (the study in docs/routing.md reports how far they go).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing import scoring
from shoal.routing.kmeans import spherical_kmeans
from shoal.routing.refit import Feedback, posterior_quality
from shoal.routing.replay import FeedbackLog, Labelled
from shoal.routing.tables import TableRouter

F64 = npt.NDArray[np.float64]


def _blended(router: TableRouter, vectors: npt.NDArray[Any], table: F64) -> F64:
    idx, w = router.neighbours(vectors)
    out: F64 = np.einsum("np,npm->nm", w.astype(np.float64), table[idx])
    return out


def knn_choice(
    router: TableRouter,
    log: FeedbackLog,
    stream: Labelled,
    queries: npt.NDArray[Any],
    *,
    neighbours: int = 100,
    prior_weight: float = 4.0,
    alpha: float | None = None,
    chunk: int = 512,
) -> npt.NDArray[np.int64]:
    """First choices for ``queries`` from per-query estimates near each prompt."""
    a = router.alpha if alpha is None else scoring.check_alpha(alpha)
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    m = len(router.models)
    prior = _blended(router, q, router.quality)
    cost = _blended(router, q, router.cost)
    if not log.rows:
        est = prior
    else:
        ev = stream.vectors[np.asarray(log.rows)]
        models = np.asarray(log.models)
        scores = np.asarray(log.scores)
        onehot = np.zeros((len(log.rows), m))
        onehot[np.arange(len(log.rows)), models] = 1.0
        kk = min(neighbours, len(log.rows))
        est = np.empty_like(prior)
        for start in range(0, q.shape[0], chunk):
            sims = q[start : start + chunk] @ ev.T  # (c, e)
            nn = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            s = np.clip(np.take_along_axis(sims, nn, axis=1), 0.0, None).astype(np.float64)
            n = np.einsum("ce,cem->cm", s, onehot[nn])
            total = np.einsum("ce,cem->cm", s * scores[nn], onehot[nn])
            p = prior[start : start + chunk]
            est[start : start + chunk] = (prior_weight * p + total) / (prior_weight + n)
    lo, hi = est.min(axis=1, keepdims=True), est.max(axis=1, keepdims=True)
    qn = np.divide(est - lo, hi - lo, out=np.zeros_like(est), where=hi - lo > 1e-12)
    clo, chi = cost.min(axis=1, keepdims=True), cost.max(axis=1, keepdims=True)
    cn = np.divide(cost - clo, chi - clo, out=np.zeros_like(cost), where=chi - clo > 1e-12)
    return scoring.rank(a * qn + (1 - a) * (1 - cn), router.prior())[:, 0]


def fine_router(
    router: TableRouter,
    log: FeedbackLog,
    stream: Labelled,
    *,
    clusters: int,
    prior_weight: float = 8.0,
    seed: int = 0,
) -> TableRouter:
    """A router with ``clusters`` finer clusters fitted on the logged queries."""
    if not log.rows:
        return router
    ev = stream.vectors[np.asarray(log.rows)]
    centroids, labels = spherical_kmeans(ev, min(clusters, len(log.rows)), seed=seed)
    k = centroids.shape[0]
    prior = _blended(router, centroids, router.quality)
    cost = _blended(router, centroids, router.cost)
    fb = Feedback.zeros(k, len(router.models))
    for lab, j, s in zip(labels.tolist(), log.models, log.scores, strict=True):
        fb.add(int(lab), j, s)
    return TableRouter(
        models=router.models,
        centroids=centroids.astype(np.float32),
        quality=posterior_quality(prior, fb, prior_weight),
        cost=cost,
        top_p=min(router.top_p, k),
        temperature=router.temperature,
        alpha=router.alpha,
    )
