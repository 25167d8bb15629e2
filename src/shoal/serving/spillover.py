"""The ingress's spillover stage: while the router's first choice would keep a request past its
tier's latency objective, the request goes to the next-best model that has room.

Called by :meth:`shoal.serving.ingress.Endpoint.generate` for routed requests (``model:
"auto"``), after the router ranked the models, the tenant's allowed models were applied and
the models that cannot serve the request were dropped, and before the fallback caller
(:mod:`shoal.serving.fallback`) calls them in turn. The rule is
:func:`shoal.routing.spillover.choose` (the fleet simulator applies the same one); this stage
feeds it what one ingress replica knows of each model:

- requests in flight: the replica's own count (:class:`~shoal.serving.fallback.ModelBook`,
  requests queued in Ray Serve's handle and in the engine included), times the number of
  ingress replicas (Ray Serve spreads requests evenly over them);
- slots: ready replicas times the requests a replica runs at once: the engine's own batch
  (``engineArgs``: ``max_batch`` of the simulator, ``n_parallel`` of llama.cpp's server,
  ``max_num_seqs`` of vLLM), else the tier's ``targetOngoingRequests``, at most Ray Serve's
  ``max_ongoing_requests``. Ready replicas come from Ray Serve's own status
  (:class:`RayReplicaCounts`, polled every two seconds off the event loop); without Ray, the
  counts the operator rendered (``replicas``), else the model's initial count;
- the measured seconds a request holds a slot: a moving average of the time from a model's
  first token to its last (:meth:`ModelBook.observe_service`), the engines' end-to-end time
  less their time to first token, as the autoscaler measures it;
- each tier's TTFT objective, and, for the quality drop, the router's per-cluster quality
  table (:meth:`shoal.serving.ranking.ClusterRanker.quality_of`).

The router's decision metric keeps counting the first choice (the autoscaler's demand), so a
spilled request is demand for the model it could not wait for. A spill is counted per model
pair (``shoal_spilled_requests_total{model=<first choice>, to=<taker>}``) and shown in the
answer (``x-shoal-model`` names the taker, ``x-shoal-spilled-from`` the first choice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from shoal.api.v1alpha1 import ModelSpec, TierSpec
from shoal.contract import BuildArgs, model_deployment_name, replica_range
from shoal.routing.spillover import Choice, Load, SpillPolicy, choose
from shoal.serving.fallback import ModelBook
from shoal.serving.metrics import RouterMetrics

log = logging.getLogger("shoal.serving.ingress")

#: Header naming the router's first choice of a spilled request.
SPILLED_HEADER = "x-shoal-spilled-from"
#: How often an ingress replica reads its models' ready replicas from Ray Serve.
REPLICA_POLL_SECONDS = 2.0
#: The engine arguments that say how many requests a replica runs at once.
BATCH_ARGS = ("max_batch", "n_parallel", "max_num_seqs")

ReplicaCounts = Callable[[], Mapping[str, int]]


def spill_policy(args: BuildArgs) -> SpillPolicy:
    """The policy's spillover settings (off when the policy has none)."""
    spec = args.policy.spillover
    if spec is None or not spec.enabled:
        return SpillPolicy(enabled=False)
    return SpillPolicy(
        enabled=True,
        max_quality_drop=float(Decimal(spec.max_quality_drop)),
        slo_share=float(Decimal(spec.slo_share)),
    )


def slots_per_replica(model: ModelSpec, tier: TierSpec) -> int:
    """Requests one replica of ``model`` runs at once (see the module docstring)."""
    target = tier.autoscaling.target_ongoing_requests
    ongoing = max(4, 2 * target)  # Ray Serve's max_ongoing_requests (contract.serve)
    for key in BATCH_ARGS:
        value = model.engine_args.get(key) if model.engine_args else None
        if isinstance(value, int) and value > 0:
            return min(value, ongoing)
    return max(1, min(target, ongoing))


class SpilloverStage:
    """One ingress replica's spillover (see the module docstring)."""

    def __init__(
        self,
        args: BuildArgs,
        book: ModelBook,
        metrics: RouterMetrics,
        quality_of: Callable[[int], Mapping[str, float] | None] | None = None,
        replicas: ReplicaCounts | None = None,
    ) -> None:
        self.args = args
        self.book = book
        self.metrics = metrics
        self.policy = spill_policy(args)
        self.quality_of = quality_of
        self.ingress_replicas = args.ingress.num_replicas
        self.slots: dict[str, int] = {}
        self.slo: dict[str, float] = {}
        self.outside: set[str] = set()
        self.configured: dict[str, int] = {}
        for m in args.fleet.models:
            tier = args.tier_of(m)
            self.slo[m.name] = tier.slo.ttft_p95_milliseconds / 1000.0
            if m.is_external:
                self.outside.add(m.name)
                continue
            self.slots[m.name] = slots_per_replica(m, tier)
            self.configured[m.name] = args.replicas.get(m.name, replica_range(m, tier).initial)
        self.replicas = replicas or (lambda: self.configured)

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def load(self, model: str, ready: Mapping[str, int]) -> Load:
        """What this replica knows of ``model``'s load now."""
        slo = self.slo[model]
        if model in self.outside:
            return Load(0, 0, None, slo, self.book.first_token_seconds.get(model, 0.0), True)
        parked = model in self.args.parked
        return Load(
            in_flight=self.book.in_flight.get(model, 0) * self.ingress_replicas,
            slots=0 if parked else ready.get(model, 0) * self.slots[model],
            service_seconds=self.book.service_seconds.get(model),
            slo_seconds=slo,
        )

    def route(self, ranked: list[str], headers: dict[str, str], cluster: int | None) -> list[str]:
        """``ranked`` with the model spillover chose first; the headers name a spill."""
        if not self.policy.enabled or len(ranked) < 2 or "x-shoal-explored" in headers:
            return ranked
        quality = self.quality_of(cluster) if self.quality_of and cluster is not None else None
        ready = self.replicas()
        loads = {m: self.load(m, ready) for m in ranked if m in self.slo}
        choice = self.decide(ranked, loads, quality)
        if not choice.spilled:
            return ranked
        self.metrics.spilled(choice.first, choice.model)
        headers[SPILLED_HEADER] = choice.first
        log.debug("spillover: %s", choice.reason)
        return [choice.model, *(m for m in ranked if m != choice.model)]

    def decide(
        self, ranked: list[str], loads: Mapping[str, Load], quality: Mapping[str, float] | None
    ) -> Choice:
        return choose(ranked, loads, quality, self.policy)


class RayReplicaCounts:
    """Ready (RUNNING) replicas per model from Ray Serve's status, polled off the event loop
    every :data:`REPLICA_POLL_SECONDS`; until the first answer, and whenever Ray Serve cannot
    say, the fallback counts."""

    def __init__(self, deployments: Mapping[str, str], fallback: Mapping[str, int]) -> None:
        #: model -> its deployment's name.
        self.deployments = dict(deployments)
        self.counts: dict[str, int] = dict(fallback)
        self._task: asyncio.Task[None] | None = None

    def __call__(self) -> Mapping[str, int]:
        return self.counts

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def read(self) -> dict[str, int] | None:
        """Blocking: RUNNING replicas per model of this application (None: unknown)."""
        from ray import serve

        app = serve.get_replica_context().app_name
        status: Any = serve.status()
        found = status.applications.get(app)
        if found is None:
            return None
        out: dict[str, int] = {}
        for model, name in self.deployments.items():
            deployment = found.deployments.get(name)
            if deployment is not None:
                states = {
                    str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()
                }
                out[model] = int(states.get("RUNNING", 0))
        return out

    async def _loop(self) -> None:
        while True:
            try:
                counts = await asyncio.to_thread(self.read)
            except Exception as exc:  # keep the counts in use; never let the loop die
                log.debug("replica counts from Ray Serve unavailable: %s", exc)
            else:
                if counts is not None:
                    self.counts = {**self.counts, **counts}
            await asyncio.sleep(REPLICA_POLL_SECONDS)


def ray_replica_counts(args: BuildArgs) -> RayReplicaCounts:
    """Ready replicas of the fleet's own models from Ray Serve (the ingress deployment's)."""
    own = [m for m in args.fleet.models if not m.is_external]
    fallback = {
        m.name: args.replicas.get(m.name, replica_range(m, args.tier_of(m)).initial) for m in own
    }
    return RayReplicaCounts({m.name: model_deployment_name(m.name) for m in own}, fallback)
