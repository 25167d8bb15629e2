"""Which models may answer a request, best first: the policy's strategy on the request path.

:func:`make_ranker` turns the fleet's :class:`BuildArgs` into a :class:`Ranker`:

- ``cluster`` strategy: the learned router from :mod:`shoal.routing`, loaded from the
  artifact file the operator mounts (``router_artifact_path``), with the policy's embedder
  (an ``openai`` one reaches the policy's endpoint, with the API key the operator puts in
  ``SHOAL_EMBEDDER_API_KEY``);
- ``static`` strategy: the policy's ``staticOrder``.

Either way the policy's ``fallbackModel`` is appended last when it is not already ranked.

The cluster ranker follows its artifact file: when the operator writes a new artifact version
(a refit from feedback; Kubernetes then swaps the mounted ConfigMap file atomically), the
ingress's :meth:`ClusterRanker.watch` loop notices within :data:`ARTIFACT_POLL_SECONDS`,
loads the new router off the event loop and swaps it in with one assignment: a request
ranks with the old router or the new one, never a mix, and none is dropped. A file that does
not load (torn, corrupt, or ranking models the fleet lacks) is logged and the router in use
stays.
:class:`HealthBoard` remembers which models failed recently so the ingress skips them for a
cooldown. Both are plain Python, testable without Ray.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from shoal.api.v1alpha1 import RoutingPolicySpec
from shoal.contract import EMBEDDER_API_KEY_ENV, BuildArgs
from shoal.contract.lora import routable_models
from shoal.routing.cascade_plan import CascadePlan, CascadePlanError

if TYPE_CHECKING:
    from shoal.routing import Embedder

log = logging.getLogger(__name__)

#: How often an ingress replica looks at its router artifact file for a new version.
ARTIFACT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Ranking:
    """A ranked list of model names, with how the decision was made."""

    models: list[str]
    cluster: int | None
    elapsed_ms: float
    strategy: str
    #: Each model's blended score in [0, 1] (cluster strategy), for exploration.
    scores: dict[str, float] | None = None
    #: Version of the router artifact that ranked (cluster strategy).
    version: int | None = None
    #: The query's cosine similarity to each router centroid (cluster strategy), for a
    #: cascade's verifier (:mod:`shoal.routing.cascade_score`).
    similarity: tuple[float, ...] | None = None


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
        self.path = artifact
        self.fleet_models = list(fleet_models)
        self.policy = policy
        self.fallback = fallback
        self.reloads = 0
        with open(artifact, "rb") as f:
            data = f.read()
        self._stat = _stat_of(artifact)
        self._digest = hashlib.sha256(data).hexdigest()
        self._refused: str | None = None
        self.router = self._load(data, None)
        self.blocking = not self.router.embedder.name.startswith(self.INLINE_EMBEDDERS)

    def _load(self, data: bytes, current: Any) -> Any:
        """A router over ``data``; the current router's embedder kept when the artifact
        names the same one (a refit changes tables, not the embedder)."""
        from shoal.routing import load_router, read_artifact_info

        info = read_artifact_info(data)
        embedder = None
        if current is not None and (current.embedder.name, current.embedder.dim) == (
            info.embedder,
            info.embedder_dim,
        ):
            embedder = current.embedder
        router = load_router(
            data, embedder=embedder or remote_embedder(self.policy, info.embedder_dim)
        )
        known = set(self.fleet_models)
        missing = [m for m in router.models if m not in known]
        if missing:
            raise ValueError(
                f"router artifact ranks models the fleet does not have: {', '.join(missing)}"
            )
        # The artifact's cascade plan travels with its router: one assignment swaps both.
        router.cascade_plan = _cascade_plan(data, int(router.info.clusters))  # type: ignore[attr-defined]
        return router

    @property
    def cascade_plan(self) -> CascadePlan | None:
        """The cascade plan of the artifact in use (None: it carries none)."""
        plan: CascadePlan | None = getattr(self.router, "cascade_plan", None)
        return plan

    @property
    def version(self) -> int:
        """Version of the artifact in use (1 as fitted, one more per refit)."""
        return int(self.router.info.version)

    @property
    def checksum(self) -> str:
        """Checksum of the artifact in use."""
        return str(self.router.info.checksum)

    def reload(self) -> bool:
        """Load the artifact file again if it changed; True when a new router is in use.

        Blocking (reads and decodes the file): :meth:`watch` calls it off the event loop.
        """
        stat = _stat_of(self.path)
        if stat is None or stat == self._stat:
            return False
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            log.warning("cannot read the router artifact %s: %s", self.path, exc)
            return False
        digest = hashlib.sha256(data).hexdigest()
        if digest in (self._digest, self._refused):
            self._stat = stat
            return False
        try:
            router = self._load(data, self.router)
        except Exception as exc:  # keep serving with the router in use
            log.warning("router artifact %s not loaded, keeping version %d: %s",
                        self.path, self.version, exc)  # fmt: skip
            self._refused = digest
            self._stat = stat
            return False
        old = self.version
        self.router = router  # one assignment: a request sees the old router or the new one
        self._stat, self._digest = stat, digest
        self.reloads += 1
        log.info("router artifact version %d in use (was %d), %s", self.version, old,
                 self.checksum[:19])  # fmt: skip
        return True

    async def watch(self, every: float = ARTIFACT_POLL_SECONDS) -> None:
        """Follow the artifact file until cancelled (one ingress replica's background task)."""
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.reload)
            except Exception:  # never let the watcher die
                log.exception("router artifact reload failed")

    def quality_of(self, cluster: int) -> dict[str, float] | None:
        """Each model's quality in ``cluster``, in the router's own units (the calibration
        scores): what spillover bounds the quality drop with. None for an unknown cluster."""
        router = self.router
        table = router.quality
        if not 0 <= cluster < len(table):
            return None
        return dict(zip(router.models, (float(q) for q in table[cluster]), strict=True))

    def rank_similarity(self, similarity: Sequence[float], alpha: float) -> list[str]:
        """The models, best first, for a query known by its similarity to each centroid, at
        ``alpha``, without embedding it again (a cascade chain answered by the router's own
        choice ranks at the plan's alpha). ``ValueError`` when the similarities are for
        another artifact (one reloaded since the query was ranked)."""
        return _with_fallback(self.router.rank_similarity(similarity, alpha=alpha), self.fallback)

    def rank(self, text: str, alpha: float | None = None) -> Ranking:
        from shoal.routing import EmbedderUnavailable

        router = self.router  # the one this request ranks with, whatever a reload does
        version = int(router.info.version)
        started = time.perf_counter()
        try:
            decision = router.rank(text, alpha=alpha)
        except EmbedderUnavailable as exc:  # a remote embedder is down: route by the tables
            log.warning("routing without the query's embedding: %s", exc)
            models = router.rank_unembedded(alpha=alpha)
            elapsed = (time.perf_counter() - started) * 1000.0
            return Ranking(
                _with_fallback(models, self.fallback), None, elapsed, self.strategy, None, version
            )
        return Ranking(
            _with_fallback(list(decision.models), self.fallback),
            decision.cluster,
            decision.elapsed_ms,
            self.strategy,
            dict(decision.scores),
            version,
            decision.similarity or None,
        )


def _cascade_plan(data: bytes, clusters: int) -> CascadePlan | None:
    """The artifact's cascade plan; None (logged) when it has none or one that does not fit
    its clusters: the policy's threshold applies then."""
    from shoal.routing.artifact import decode_artifact

    header, _ = decode_artifact(data)
    try:
        plan = CascadePlan.from_header(header)
        if plan is not None:
            plan.check_clusters(clusters)
    except CascadePlanError as exc:
        log.warning("router artifact's cascade plan not used: %s", exc)
        return None
    return plan


def _stat_of(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is replaced (Kubernetes swaps a ConfigMap's files through
    a symlink, which ``stat`` follows); None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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
        routable_models(args.fleet),  # LoRA adapters as <model>:<adapter>
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
