"""SLO-aware spillover: where a request goes when the router's first choice would keep it
waiting past its tier's latency objective.

A reactive autoscaler cannot add a replica faster than one starts; during that time the
requests of a model whose traffic jumped queue behind each other. A fleet has other models
that can answer the same query, somewhat worse, with room to spare. This module is the rule
that trades a bounded quality drop for the latency objective while replicas start, written
once for both users:

- the ingress (:mod:`shoal.serving.spillover`), with what one ingress replica knows of its
  models (requests in flight, replicas ready, measured seconds per request);
- the fleet simulator (:mod:`shoal.sim.simulator`), with the simulated pools.

Pure and Ray-free: :func:`expected_wait` estimates a request's wait for a batch slot on one
model from a :class:`Load`; :func:`choose` picks the model. The choice, for a ranked list
(best first, as the router orders them by quality and cost):

1. spillover off, a single candidate, or a first choice whose estimated time to first token
   fits its tier's objective (or cannot be estimated: no evidence, no spill): the first
   choice;
2. otherwise the best-ranked candidate whose quality, in the router's own per-cluster
   quality units, is at most ``max_quality_drop`` below the first choice's and whose own
   estimate fits its own tier's objective;
3. no such candidate: the first choice, as without spillover.

Every :class:`Choice` carries its reason in words and the estimates it compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Choice", "Load", "SpillPolicy", "choose", "expected_first_token", "expected_wait"]


@dataclass(frozen=True)
class Load:
    """What the caller knows of one model's load at the moment a request arrives.

    - ``in_flight``: requests the model has now, running or queued for a slot (the whole
      fleet's, as well as the caller can tell: an ingress replica scales its own count by
      the number of ingress replicas).
    - ``slots``: requests it runs at once: ready replicas times the requests a replica runs
      in parallel. 0: no replica is ready (a request would wait for one to start).
    - ``service_seconds``: measured mean seconds a request holds a slot (None: not measured
      yet).
    - ``first_token_seconds``: time to the first token of a request that does not wait
      (its prefill and the step in progress); 0 when unknown.
    - ``slo_seconds``: the model's tier's time-to-first-token objective.
    - ``unbounded``: the model is served outside the fleet (someone else's capacity): it
      never queues here, its estimate is its ``first_token_seconds``.
    """

    in_flight: float
    slots: float
    service_seconds: float | None
    slo_seconds: float
    first_token_seconds: float = 0.0
    unbounded: bool = False


def expected_wait(load: Load) -> float | None:
    """Seconds a request arriving now waits for a slot on the model.

    0 while a slot is free. Otherwise the requests queued ahead of it, plus itself, each
    take one slot's ``service_seconds`` spread over ``slots`` slots (FIFO: the queue drains
    at ``slots / service_seconds`` requests a second). ``inf`` when no replica is ready and
    requests are in flight or would queue; None when a queue exists and no service time has
    been measured (no evidence to estimate from).
    """
    if load.unbounded:
        return 0.0
    if load.slots <= 0:
        return math.inf
    queued_ahead = load.in_flight - load.slots
    if queued_ahead < 0:
        return 0.0
    if load.service_seconds is None:
        return None
    return (math.floor(queued_ahead) + 1) * load.service_seconds / load.slots


def expected_first_token(load: Load) -> float | None:
    """Estimated seconds to the first token: the wait for a slot plus the first token's own
    time (None when the wait cannot be estimated)."""
    wait = expected_wait(load)
    return None if wait is None else wait + load.first_token_seconds


@dataclass(frozen=True)
class SpillPolicy:
    """The routing policy's spillover settings (``RoutingPolicy.spec.spillover``).

    ``slo_share`` is the share of a tier's objective an estimate may fill and still count as
    fitting (1.0: the objective itself; lower keeps a margin for the estimate's error).
    """

    enabled: bool = False
    max_quality_drop: float = 0.1
    slo_share: float = 1.0


@dataclass(frozen=True)
class Choice:
    """Where the request goes, and why."""

    model: str
    #: The router's first choice (the demand the autoscaler sizes for).
    first: str
    reason: str
    #: Estimated seconds to the first token of every candidate compared (None: unknown).
    estimates: dict[str, float | None] = field(default_factory=dict)
    #: The first choice's quality less the chosen model's (router quality units; 0 when
    #: not spilled).
    quality_drop: float = 0.0

    @property
    def spilled(self) -> bool:
        """Whether the request goes to a model other than the router's first choice."""
        return self.model != self.first


def _fits(estimate: float | None, load: Load, share: float) -> bool:
    return estimate is not None and estimate <= share * load.slo_seconds


def choose(
    ranked: Sequence[str],
    loads: Mapping[str, Load],
    quality: Mapping[str, float] | None,
    policy: SpillPolicy,
) -> Choice:
    """The model a request goes to (see the module docstring).

    ``ranked``: the capable candidates, best first; ``loads``: what is known of each (a
    candidate without a load is not spilled to); ``quality``: each model's quality for the
    request's cluster in the router's units (None: no quality tables, nothing is spilled).
    """
    if not ranked:
        raise ValueError("no candidate to choose from")
    first = ranked[0]
    if not policy.enabled or len(ranked) < 2:
        return Choice(first, first, "spillover off" if not policy.enabled else "one candidate")
    load = loads.get(first)
    if load is None:
        return Choice(first, first, f"no load known for {first}")
    mine = expected_first_token(load)
    estimates: dict[str, float | None] = {first: mine}
    if mine is None:
        return Choice(first, first, f"{first}: queueing, no service time measured yet", estimates)
    if _fits(mine, load, policy.slo_share):
        return Choice(first, first, f"{first} fits its objective ({mine:.2f}s)", estimates)
    if quality is None or first not in quality:
        return Choice(first, first, "no quality tables to bound the drop", estimates)
    passed: list[str] = []
    for model in ranked[1:]:
        other = loads.get(model)
        if other is None or model not in quality:
            passed.append(f"{model}: unknown")
            continue
        drop = quality[first] - quality[model]
        if drop > policy.max_quality_drop + 1e-9:
            passed.append(f"{model}: quality {drop:.2f} lower")
            continue
        estimate = expected_first_token(other)
        estimates[model] = estimate
        if not _fits(estimate, other, policy.slo_share):
            shown = "unknown" if estimate is None else f"{estimate:.2f}s"
            passed.append(f"{model}: {shown}")
            continue
        assert estimate is not None
        return Choice(
            model,
            first,
            f"{first} would answer in {mine:.2f}s (objective {load.slo_seconds:.2f}s); "
            f"{model} in {estimate:.2f}s, quality {drop:.2f} lower",
            estimates,
            max(0.0, drop),
        )
    why = "; ".join(passed) or "no other candidate"
    return Choice(
        first,
        first,
        f"{first} would answer in {mine:.2f}s (objective {load.slo_seconds:.2f}s) and no "
        f"candidate fits ({why})",
        estimates,
    )
