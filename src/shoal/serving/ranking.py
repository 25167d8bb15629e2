"""Which models may answer a request, best first: the policy's strategy on the request path.

:func:`make_ranker` turns the fleet's :class:`BuildArgs` into a :class:`Ranker`:

- ``cluster`` strategy: the learned router from :mod:`shoal.routing`, loaded from the
  artifact file the operator mounts (``router_artifact_path``), with the policy's embedder
  (an ``openai`` one reaches the policy's endpoint, with the API key the operator puts in
  ``SHOAL_EMBEDDER_API_KEY``);
- ``static`` strategy: the policy's ``staticOrder``.

Either way the policy's ``fallbackModel`` is appended last when it is not already ranked.
:class:`HealthBoard` remembers which models failed recently so the ingress skips them for a
cooldown. Both are plain Python, testable without Ray.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from shoal.api.v1alpha1 import RoutingPolicySpec
from shoal.contract import EMBEDDER_API_KEY_ENV, BuildArgs

if TYPE_CHECKING:
    from shoal.routing import Embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranking:
    """A ranked list of model names, with how the decision was made."""

    models: list[str]
    cluster: int | None
    elapsed_ms: float
    strategy: str
    #: Each model's blended score in [0, 1] (cluster strategy), for exploration.
    scores: dict[str, float] | None = None


class Ranker(Protocol):
    """Ranks the fleet's models for one query text."""

    strategy: str
    #: Whether :meth:`rank` does enough work (an embedding) to belong off the event loop.
    blocking: bool

    def rank(self, text: str, alpha: float | None = None) -> Ranking: ...


class StaticRanker:
    """The policy's fixed preference order."""

    strategy = "static"
    blocking = False

    def __init__(self, order: list[str], fallback: str | None = None) -> None:
        self.order = _with_fallback(list(order), fallback)

    def rank(self, text: str, alpha: float | None = None) -> Ranking:
        return Ranking(list(self.order), None, 0.0, self.strategy)


class ClusterRanker:
    """The learned cluster router of :mod:`shoal.routing`, restricted to the fleet's models."""

    strategy = "cluster"
    #: Embedders fast enough (well under a millisecond) to run on the event loop.
    INLINE_EMBEDDERS = ("minilm-l6-static", "hash-")

    def __init__(
        self,
        artifact: str,
        fleet_models: list[str],
        fallback: str | None,
        policy: RoutingPolicySpec | None = None,
    ) -> None:
        from shoal.routing import load_router, read_artifact_info

        with open(artifact, "rb") as f:
            data = f.read()
        dim = read_artifact_info(data).embedder_dim
        self.router = load_router(data, embedder=remote_embedder(policy, dim))
        self.blocking = not self.router.embedder.name.startswith(self.INLINE_EMBEDDERS)
        known = set(fleet_models)
        missing = [m for m in self.router.models if m not in known]
        if missing:
            raise ValueError(
                f"router artifact ranks models the fleet does not have: {', '.join(missing)}"
            )
        self.fallback = fallback

    def rank(self, text: str, alpha: float | None = None) -> Ranking:
        from shoal.routing import EmbedderUnavailable

        started = time.perf_counter()
        try:
            decision = self.router.rank(text, alpha=alpha)
        except EmbedderUnavailable as exc:  # a remote embedder is down: route by the tables
            log.warning("routing without the query's embedding: %s", exc)
            models = self.router.rank_unembedded(alpha=alpha)
            elapsed = (time.perf_counter() - started) * 1000.0
            return Ranking(_with_fallback(models, self.fallback), None, elapsed, self.strategy)
        return Ranking(
            _with_fallback(list(decision.models), self.fallback),
            decision.cluster,
            decision.elapsed_ms,
            self.strategy,
            dict(decision.scores),
        )


def _with_fallback(order: list[str], fallback: str | None) -> list[str]:
    if fallback and fallback not in order:
        order.append(fallback)
    return order


def make_ranker(args: BuildArgs) -> Ranker:
    """The ranker of the fleet's routing policy."""
    policy = args.policy
    if policy.strategy == "static":
        return StaticRanker(policy.static_order, policy.fallback_model)
    assert args.router_artifact_path is not None  # BuildArgs checks it for "cluster"
    return ClusterRanker(
        args.router_artifact_path,
        [m.name for m in args.fleet.models],
        policy.fallback_model,
        policy,
    )


def remote_embedder(policy: RoutingPolicySpec | None, dim: int) -> Embedder | None:
    """The policy's ``openai`` embedder: its endpoint and model, the API key from the
    environment, the artifact's dimension (so starting does not need the endpoint up). None
    for in-process embedders, which the artifact names completely."""
    if policy is None or policy.embedder.type != "openai":
        return None
    from shoal.routing import embedder_for_policy

    return embedder_for_policy(
        "openai",
        endpoint=policy.embedder.endpoint,
        model=policy.embedder.model,
        api_key=os.environ.get(EMBEDDER_API_KEY_ENV) or None,
        dim=dim,
    )


def default_alpha(args: BuildArgs) -> float:
    """The quality weight in force: the operator's effective alpha, else the policy's."""
    return float(Decimal(args.effective_alpha or args.policy.alpha))


def parse_alpha(value: str) -> float:
    """A per-request alpha from the ``x-shoal-alpha`` header (ValueError unless in [0, 1])."""
    alpha = float(value)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be within [0, 1]")
    return alpha


class HealthBoard:
    """Models that failed recently, skipped until their cooldown ends."""

    def __init__(self, cooldown_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.cooldown = cooldown_seconds
        self.clock = clock
        self._until: dict[str, float] = {}

    def healthy(self, model: str) -> bool:
        until = self._until.get(model)
        return until is None or self.clock() >= until

    def failed(self, model: str) -> None:
        self._until[model] = self.clock() + self.cooldown

    def succeeded(self, model: str) -> None:
        self._until.pop(model, None)

    def unhealthy(self) -> list[str]:
        now = self.clock()
        return sorted(m for m, t in self._until.items() if now < t)

    def candidates(self, ranked: list[str], limit: int) -> list[str]:
        """Healthy models in rank order, at most ``limit``; the best one anyway if none is."""
        healthy = [m for m in ranked if self.healthy(m)]
        return healthy[:limit] if healthy else ranked[:1]
