"""The router on the request path: load an artifact, embed a query, rank the models.

:func:`load_router` turns artifact bytes (or a file) into a :class:`Router`; the serving
layer calls :meth:`Router.rank` for every request. Per-cluster normalised tables are
computed once at load time and per-alpha score tables are cached, so a decision costs one
embedding, one ``(k, d)`` matrix-vector product and a handful of small array operations.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing import scoring
from shoal.routing.artifact import ArtifactError, ArtifactInfo, decode_artifact, read_artifact_info
from shoal.routing.types import Decision, Embedder


class Router:
    """A fitted cluster router bound to an embedder."""

    def __init__(self, data: bytes, embedder: Embedder | None = None) -> None:
        header, arrays = decode_artifact(data)
        self.info: ArtifactInfo = read_artifact_info(data)
        self.models: list[str] = list(self.info.models)
        params = header.get("params", {})
        self.default_alpha: float = scoring.check_alpha(params.get("alpha", 0.7))
        self.top_p: int = int(params.get("top_p", 3))
        self.temperature: float = float(params.get("temperature", 0.1))
        try:
            self.centroids = np.ascontiguousarray(arrays["centroids"], dtype=np.float32)
            self.quality = np.asarray(arrays["quality"], dtype=np.float32)
            self.cost = np.asarray(arrays["cost"], dtype=np.float32)
        except KeyError as exc:
            raise ArtifactError(f"router artifact lacks array {exc}") from exc
        k, m = self.quality.shape
        if self.centroids.shape != (k, self.info.embedder_dim) or self.cost.shape != (k, m):
            raise ArtifactError("router artifact arrays have inconsistent shapes")
        if m != len(self.models):
            raise ArtifactError("router artifact has tables for a different number of models")
        self.quality_n = scoring.minmax_rows(self.quality)
        self.cost_n = scoring.minmax_rows(self.cost)
        # Ties (for example identical tables) fall back to global quality, then low cost.
        mean_cost = self.cost.mean(axis=0)
        span = float(mean_cost.max() - mean_cost.min()) or 1.0
        self._prior = self.quality.mean(axis=0) - 1e-3 * (mean_cost - mean_cost.min()) / span
        self._tables: dict[float, npt.NDArray[np.float32]] = {}
        if embedder is None:
            from shoal.routing.embedders import make_embedder

            embedder = make_embedder(self.info.embedder)
        if embedder.name != self.info.embedder or embedder.dim != self.info.embedder_dim:
            raise ArtifactError(
                f"router artifact was fitted with embedder {self.info.embedder!r} "
                f"(dim {self.info.embedder_dim}), not {embedder.name!r} (dim {embedder.dim})"
            )
        self.embedder: Embedder = embedder

    # -- scoring ------------------------------------------------------------------------------

    def _table(self, alpha: float) -> npt.NDArray[np.float32]:
        table = self._tables.get(alpha)
        if table is None:
            if len(self._tables) > 64:
                self._tables.clear()
            table = scoring.cluster_scores(self.quality_n, self.cost_n, alpha)
            self._tables[alpha] = table
        return table

    def score_embeddings(
        self, vectors: npt.NDArray[Any], *, alpha: float | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Blended scores ``(n, m)`` and nearest cluster ``(n,)`` for embedded queries."""
        scores, nearest, _ = self._score(vectors, alpha)
        return scores, nearest

    def _score(
        self, vectors: npt.NDArray[Any], alpha: float | None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Blended scores, nearest cluster and the similarities to every centroid."""
        a = self.default_alpha if alpha is None else scoring.check_alpha(alpha)
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        sims = v @ self.centroids.T
        idx, w = scoring.top_p_softmax(sims, self.top_p, self.temperature)
        return scoring.blend(idx, w, self._table(a)), idx[:, 0], sims

    def rank_embeddings(
        self, vectors: npt.NDArray[Any], *, alpha: float | None = None
    ) -> npt.NDArray[np.int64]:
        """Model indices per embedded query, best first (for evaluation)."""
        scores, _ = self.score_embeddings(vectors, alpha=alpha)
        return scoring.rank(scores, self._prior)

    def _decisions(
        self, vectors: npt.NDArray[Any], alpha: float | None, started: float
    ) -> list[Decision]:
        scores, nearest, sims = self._score(vectors, alpha)
        order = scoring.rank(scores, self._prior)
        elapsed = (time.perf_counter() - started) * 1000.0 / max(1, len(scores))
        models = self.models
        out = []
        for row, ranked, cluster, sim in zip(
            scores.tolist(), order.tolist(), nearest.tolist(), sims.tolist(), strict=True
        ):
            out.append(
                Decision(
                    models=[models[i] for i in ranked],
                    cluster=int(cluster),
                    scores=dict(zip(models, row, strict=True)),
                    elapsed_ms=elapsed,
                    similarity=tuple(sim),
                )
            )
        return out

    # -- public API ---------------------------------------------------------------------------

    def rank_unembedded(self, *, alpha: float | None = None) -> list[str]:
        """Every model, best first, for no query in particular: each cluster's blended score,
        averaged over clusters. What to route by while the query cannot be embedded (a remote
        embedder that is down)."""
        a = self.default_alpha if alpha is None else scoring.check_alpha(alpha)
        scores = self._table(a).mean(axis=0, keepdims=True)
        return [self.models[i] for i in scoring.rank(scores, self._prior)[0].tolist()]

    def rank_similarity(self, similarity: Sequence[float], *, alpha: float) -> list[str]:
        """Every model, best first, for a query known by its similarity to each centroid (a
        :class:`Decision`'s ``similarity``), at ``alpha``: what :meth:`rank` gives that query
        at ``alpha``, without embedding it again (a cascade's routed chain ranks at its own
        alpha, :mod:`shoal.routing.cascade_plan`)."""
        sims = np.asarray([similarity], dtype=np.float32)
        if sims.shape != (1, self.centroids.shape[0]):
            raise ValueError(
                f"{sims.shape[1]} similarities for a router of {self.centroids.shape[0]} clusters"
            )
        idx, w = scoring.top_p_softmax(sims, self.top_p, self.temperature)
        scores = scoring.blend(idx, w, self._table(scoring.check_alpha(alpha)))
        return [self.models[i] for i in scoring.rank(scores, self._prior)[0].tolist()]

    def rank(self, text: str, *, alpha: float | None = None) -> Decision:
        """Rank every model of the artifact for one query, best first."""
        started = time.perf_counter()
        return self._decisions(self.embedder.embed([text]), alpha, started)[0]

    def rank_many(self, texts: Sequence[str], *, alpha: float | None = None) -> list[Decision]:
        """Rank the models for many queries at once (one embedding batch)."""
        started = time.perf_counter()
        if not texts:
            return []
        return self._decisions(self.embedder.embed(list(texts)), alpha, started)


def load_router(source: str | Path | bytes, *, embedder: Embedder | None = None) -> Router:
    """Load a router from an artifact file path or the artifact's raw bytes.

    Without ``embedder`` the one named in the artifact is built (it must be available in
    this process). Raises :class:`ArtifactError` on anything that is not a valid artifact.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ArtifactError(f"cannot read router artifact {source}: {exc}") from exc
    return Router(data, embedder)
