"""The router's decision rule over its tables alone, without an embedder.

Offline work (the feedback replay of ``shoal router learn``, the refit's check on the
calibration set) ranks models for queries that are already embedded, and swaps the quality
table for a posterior many times. :class:`TableRouter` holds the arrays of an artifact and
applies exactly the rule of :class:`~shoal.routing.router.Router` (top-p softmax blend of
per-cluster min-max normalised scores, ties broken by global quality then low cost), so its
choices match the request path's. Pure: numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing import scoring
from shoal.routing.artifact import ArtifactError, decode_artifact

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TableRouter:
    """Centroids ``(k, d)``, quality and cost ``(k, m)`` and the blend's parameters."""

    models: tuple[str, ...]
    centroids: npt.NDArray[np.float32]
    quality: F64
    cost: F64
    top_p: int
    temperature: float
    alpha: float

    @staticmethod
    def from_artifact(data: bytes) -> TableRouter:
        """The tables and parameters of artifact bytes (checksum verified)."""
        header, arrays = decode_artifact(data)
        try:
            params = header.get("params", {})
            return TableRouter(
                models=tuple(str(m) for m in header["models"]),
                centroids=np.ascontiguousarray(arrays["centroids"], dtype=np.float32),
                quality=np.asarray(arrays["quality"], dtype=np.float64),
                cost=np.asarray(arrays["cost"], dtype=np.float64),
                top_p=int(params.get("top_p", 3)),
                temperature=float(params.get("temperature", 0.1)),
                alpha=scoring.check_alpha(params.get("alpha", 0.7)),
            )
        except KeyError as exc:
            raise ArtifactError(f"router artifact lacks {exc}") from exc

    @property
    def clusters(self) -> int:
        """Number of clusters ``k``."""
        return int(self.quality.shape[0])

    def with_quality(self, quality: npt.NDArray[Any]) -> TableRouter:
        """The same router with another quality table (same shape)."""
        q = np.asarray(quality, dtype=np.float64)
        if q.shape != self.quality.shape:
            raise ValueError(f"quality table has shape {q.shape}, expected {self.quality.shape}")
        return replace(self, quality=q)

    def neighbours(
        self, vectors: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The ``top_p`` nearest clusters of each query and their softmax weights."""
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        return scoring.top_p_softmax(v @ self.centroids.T, self.top_p, self.temperature)

    def prior(self) -> F64:
        """The tie-break order of :class:`~shoal.routing.router.Router`."""
        q = self.quality.astype(np.float32).mean(axis=0).astype(np.float64)
        mean_cost = self.cost.astype(np.float32).mean(axis=0).astype(np.float64)
        span = float(mean_cost.max() - mean_cost.min()) or 1.0
        out: F64 = q - 1e-3 * (mean_cost - mean_cost.min()) / span
        return out

    def cluster_scores(self, alpha: float | None = None) -> npt.NDArray[np.float32]:
        """Per-cluster model scores ``(k, m)`` at ``alpha`` (default: the artifact's)."""
        a = self.alpha if alpha is None else scoring.check_alpha(alpha)
        qn = scoring.minmax_rows(self.quality.astype(np.float32))
        cn = scoring.minmax_rows(self.cost.astype(np.float32))
        return scoring.cluster_scores(qn, cn, a)

    def choose(
        self, vectors: npt.NDArray[Any], *, alpha: float | None = None
    ) -> npt.NDArray[np.int64]:
        """The first-choice model index of each embedded query."""
        idx, w = self.neighbours(vectors)
        scores = scoring.blend(idx, w, self.cluster_scores(alpha))
        return scoring.rank(scores, self.prior())[:, 0]
