"""Prometheus metrics of the fleet endpoint (router side) and of engines (vLLM's names).

Two sets, each defined once here:

- :class:`RouterMetrics`, recorded by the ingress: requests per model and tier, routing
  decisions, fallbacks, routing latency, time to first token and end-to-end latency
  (buckets fine enough for sub-second SLOs), tokens and estimated cost in USD.
- :class:`EngineMetrics`, recorded inside a model replica: vLLM's metric names
  (``vllm:num_requests_running``, ``vllm:time_to_first_token_seconds``, ...) for the
  simulator, so dashboards and the autoscaler read a simulated fleet like a vLLM one.

Inside Ray the metrics go through Ray's metrics API (``ray.util.metrics``): Ray aggregates
every replica process of a node and serves them on the node's metrics port (KubeRay scrapes
it), with Ray's ``ray_`` prefix and, as vLLM's own Ray stat logger does, ``:`` turned into
``_`` (Ray refuses ``:``): ``ray_shoal_requests_total``, ``ray_vllm_num_requests_running``.
Outside Ray (unit tests, in-process use) the same metrics go to a ``prometheus_client``
registry under their bare names, ``vllm:num_requests_running`` included.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from shoal.contract.cost import REFERENCE_COST_METRIC, TENANT_REFERENCE_COST_METRIC, ModelPrice
from shoal.contract.serve import FEEDBACK_INSTANCE_LABEL, FEEDBACK_LOGGED_METRIC
from shoal.contract.tenants import TENANT_COST_METRIC, TENANT_REQUESTS_METRIC, TENANT_TOKENS_METRIC

Backend = Literal["ray", "prometheus"]

#: Latency buckets (seconds): fine below one second for TTFT/SLO work, coarse up to minutes.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
#: Routing decision buckets (seconds): the router should take well under ten milliseconds.
ROUTING_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
#: Inter-token latency buckets (seconds).
ITL_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 1.0,
)  # fmt: skip


class _Metric(Protocol):
    def inc(self, value: float, labels: dict[str, str]) -> None: ...
    def set(self, value: float, labels: dict[str, str]) -> None: ...
    def observe(self, value: float, labels: dict[str, str]) -> None: ...


class _RayMetric:
    """A ``ray.util.metrics`` metric behind the small interface above."""

    def __init__(
        self,
        kind: str,
        name: str,
        doc: str,
        labels: Sequence[str],
        buckets: Sequence[float] = (),
    ) -> None:
        from ray.util import metrics as rm

        keys = tuple(labels)
        self._m: Any
        if kind == "counter":
            self._m = rm.Counter(name, description=doc, tag_keys=keys)
        elif kind == "gauge":
            self._m = rm.Gauge(name, description=doc, tag_keys=keys)
        else:
            self._m = rm.Histogram(name, description=doc, boundaries=list(buckets), tag_keys=keys)

    def inc(self, value: float, labels: dict[str, str]) -> None:
        if value > 0:  # Ray's counters refuse 0 (an answer of no tokens counts nothing)
            self._m.inc(value, tags=labels)

    def set(self, value: float, labels: dict[str, str]) -> None:
        self._m.set(value, tags=labels)

    def observe(self, value: float, labels: dict[str, str]) -> None:
        self._m.observe(value, tags=labels)


class _PromMetric:
    """A ``prometheus_client`` metric behind the small interface above."""

    def __init__(
        self,
        kind: str,
        name: str,
        doc: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        registry: Any,
    ) -> None:
        import prometheus_client as pc

        if kind == "counter":
            self._m: Any = pc.Counter(name, doc, list(labels), registry=registry)
        elif kind == "gauge":
            self._m = pc.Gauge(name, doc, list(labels), registry=registry)
        else:
            self._m = pc.Histogram(name, doc, list(labels), buckets=buckets, registry=registry)
        self._labelled = bool(labels)

    def _child(self, labels: dict[str, str]) -> Any:
        return self._m.labels(**labels) if self._labelled else self._m

    def inc(self, value: float, labels: dict[str, str]) -> None:
        self._child(labels).inc(value)

    def set(self, value: float, labels: dict[str, str]) -> None:
        self._child(labels).set(value)

    def observe(self, value: float, labels: dict[str, str]) -> None:
        self._child(labels).observe(value)


class _Factory:
    def __init__(self, backend: Backend, registry: Any = None) -> None:
        self.backend = backend
        if backend == "prometheus" and registry is None:
            import prometheus_client as pc

            registry = pc.CollectorRegistry()
        self.registry = registry

    def make(
        self,
        kind: str,
        name: str,
        doc: str,
        labels: Sequence[str],
        buckets: Sequence[float] = (),
    ) -> _Metric:
        if kind == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]  # both exporters add the suffix to counters
        if self.backend == "ray":
            # Ray's metrics pipeline refuses ':' in names; like vLLM's own Ray stat logger,
            # export vllm:x as vllm_x (Ray adds its ray_ prefix).
            return _RayMetric(kind, name.replace(":", "_"), doc, labels, buckets)
        return _PromMetric(kind, name, doc, labels, buckets, self.registry)


class RouterMetrics:
    """What the ingress records for every request."""

    def __init__(
        self,
        fleet: str,
        backend: Backend = "ray",
        registry: Any = None,
        instance: str | None = None,
    ) -> None:
        f = _Factory(backend, registry)
        self.registry = f.registry
        self.fleet = fleet
        #: This process's own name in the feedback series (:data:`FEEDBACK_INSTANCE_LABEL`).
        self.instance = instance or uuid.uuid4().hex[:16]
        mt = ("fleet", "model", "tier")
        self.requests = f.make(
            "counter",
            "shoal_requests_total",
            "Requests answered per model and tier, by API and HTTP status code.",
            (*mt, "api", "code"),
        )
        self.rejected = f.make(
            "counter",
            "shoal_rejected_requests_total",
            "Requests refused before any model answered (4xx, or 503 when none could).",
            ("fleet", "api", "code"),
        )
        self.decisions = f.make(
            "counter",
            "shoal_routing_decisions_total",
            "Router decisions: the model ranked first, per strategy and cluster.",
            ("fleet", "strategy", "model", "cluster"),
        )
        self.fallbacks = f.make(
            "counter",
            "shoal_fallbacks_total",
            "Requests moved down the ranked list, from the model that could not serve.",
            ("fleet", "model", "reason"),
        )
        self.routing_latency = f.make(
            "histogram",
            "shoal_routing_latency_seconds",
            "Time the router took to rank the models (embedding included).",
            ("fleet", "strategy"),
            ROUTING_BUCKETS,
        )
        self.ttft = f.make(
            "histogram",
            "shoal_time_to_first_token_seconds",
            "Time from request arrival at the ingress to the first generated token.",
            mt,
            LATENCY_BUCKETS,
        )
        self.e2e = f.make(
            "histogram",
            "shoal_request_duration_seconds",
            "Time from request arrival at the ingress to the last byte of the answer.",
            mt,
            LATENCY_BUCKETS,
        )
        self.tokens = f.make(
            "counter",
            "shoal_tokens_total",
            "Tokens processed, by kind (prompt or completion).",
            (*mt, "kind"),
        )
        self.cost = f.make(
            "counter",
            "shoal_cost_usd_total",
            "Cost of answered requests in USD: for a model served outside the fleet, its "
            "tokens at its price per million; for the fleet's own, an estimate: the replica "
            "time each request held (its duration shared among the model's requests in "
            "flight) at the tier's price per replica hour.",
            mt,
        )
        #: The fleet's savings reference (spec.savings), set by the ingress; None: none.
        self.reference: ModelPrice | None = None
        self.reference_cost = f.make(
            "counter",
            REFERENCE_COST_METRIC,
            "What the answered requests' tokens would have cost at the fleet's savings "
            "reference (spec.savings), in USD, per model that answered; against "
            "shoal_cost_usd_total it is what the fleet saved.",
            mt,
        )
        self.in_flight = f.make(
            "gauge", "shoal_requests_in_flight", "Requests in flight per model.", mt
        )
        self.explorations = f.make(
            "counter",
            "shoal_explorations_total",
            "Routed requests sent to a near-best model instead of the first choice "
            "(the policy's exploration), per model explored.",
            ("fleet", "model"),
        )
        self.cascade_attempts = f.make(
            "counter",
            "shoal_cascade_attempts_total",
            "Models a cascade called, per model and outcome: accepted (its answer was kept), "
            "escalated (its answer was under the threshold or off its structure, and a next "
            "model was called), kept (under the threshold, but a cap, the tenant's budget or "
            "the chain's deadline stopped the chain: its answer was returned), voted (it "
            "answered as a voter of the agreement or verifier signal; its answer was compared, "
            "never returned), failed (no answer).",
            ("fleet", "model", "outcome"),
        )
        self.spills = f.make(
            "counter",
            "shoal_spilled_requests_total",
            "Routed requests sent to another model because the router's first choice (model) "
            "would have broken its tier's latency objective, per model that took them (to).",
            ("fleet", "model", "to"),
        )
        # Feedback series carry the exporting process's own name, so that a replica that
        # restarts (or a whole Ray cluster) starts series of its own instead of resetting,
        # or (Ray sums the counters of a node's processes) shrinking, a shared one: the
        # operator's refit sums each series' highest value, those of gone processes too.
        fmc = ("fleet", "model", "cluster", FEEDBACK_INSTANCE_LABEL)
        self.feedback_events = f.make(
            "counter",
            "shoal_feedback_total",
            "Client feedback on answers, per model that answered and router cluster.",
            fmc,
        )
        self.feedback_score = f.make(
            "counter",
            "shoal_feedback_score_total",
            "Sum of feedback scores (0..1) per model and router cluster; divided by "
            "shoal_feedback_total it is the mean score.",
            fmc,
        )
        self.feedback_logged = f.make(
            "counter",
            FEEDBACK_LOGGED_METRIC,
            "Feedback on answers whose routing decision is logged with its propensity p, per "
            "model, router cluster and split (fit or heldout, from the answer id): stat events "
            "(count), score (sum of scores r), weight (sum of 1/p), weighted_score (sum of r/p) "
            "and weighted_score_sq (sum of (r/p)^2), the sums an off-policy estimate needs.",
            (*fmc, "split", "stat"),
        )

        # Per tenant (chargeback). The tenant label only ever holds a declared tenant's name:
        # an unauthenticated request has no tenant and counts in shoal_rejected_requests_total.
        self.tenant_requests = f.make(
            "counter",
            TENANT_REQUESTS_METRIC,
            "Requests of each tenant, per model that answered (empty when refused) and HTTP "
            "status code.",
            ("fleet", "tenant", "model", "code"),
        )
        self.tenant_tokens = f.make(
            "counter",
            TENANT_TOKENS_METRIC,
            "Tokens of each tenant's answered requests, by kind (prompt or completion).",
            ("fleet", "tenant", "kind"),
        )
        self.tenant_cost = f.make(
            "counter",
            TENANT_COST_METRIC,
            "Estimated USD of each tenant's answered requests (as shoal_cost_usd_total).",
            ("fleet", "tenant"),
        )
        self.tenant_reference_cost = f.make(
            "counter",
            TENANT_REFERENCE_COST_METRIC,
            "What each tenant's answered requests would have cost at the fleet's savings "
            "reference, in USD (as shoal_reference_cost_usd_total).",
            ("fleet", "tenant"),
        )
        self.tenant_rejections = f.make(
            "counter",
            "shoal_tenant_rejections_total",
            "Requests of each tenant refused by its limits, by reason (requests, tokens, "
            "concurrency, budget, store, model).",
            ("fleet", "tenant", "reason"),
        )

    def tenant_finished(
        self, tenant: str, model: str, code: int, prompt: int, completion: int, cost: float
    ) -> None:
        self.tenant_requests.inc(
            1, {"fleet": self.fleet, "tenant": tenant, "model": model, "code": str(code)}
        )
        if prompt:
            self.tenant_tokens.inc(
                prompt, {"fleet": self.fleet, "tenant": tenant, "kind": "prompt"}
            )
        if completion:
            self.tenant_tokens.inc(
                completion, {"fleet": self.fleet, "tenant": tenant, "kind": "completion"}
            )
        if cost > 0:
            self.tenant_cost.inc(cost, {"fleet": self.fleet, "tenant": tenant})
        if self.reference is not None and (prompt or completion):
            ref = self.reference.cost(0.0, prompt, completion)
            self.tenant_reference_cost.inc(ref, {"fleet": self.fleet, "tenant": tenant})

    def tenant_rejected(self, tenant: str, reason: str, code: int) -> None:
        self.tenant_rejections.inc(1, {"fleet": self.fleet, "tenant": tenant, "reason": reason})
        self.tenant_requests.inc(
            1, {"fleet": self.fleet, "tenant": tenant, "model": "", "code": str(code)}
        )

    def _mt(self, model: str, tier: str) -> dict[str, str]:
        return {"fleet": self.fleet, "model": model, "tier": tier}

    def decision(self, strategy: str, model: str, cluster: int | None, seconds: float) -> None:
        cl = "" if cluster is None else str(cluster)
        self.decisions.inc(
            1, {"fleet": self.fleet, "strategy": strategy, "model": model, "cluster": cl}
        )
        self.routing_latency.observe(seconds, {"fleet": self.fleet, "strategy": strategy})

    def spilled(self, first: str, to: str) -> None:
        self.spills.inc(1, {"fleet": self.fleet, "model": first, "to": to})

    def exploration(self, model: str) -> None:
        self.explorations.inc(1, {"fleet": self.fleet, "model": model})

    def feedback(self, model: str, cluster: int | None, score: float) -> None:
        labels = {
            "fleet": self.fleet,
            "model": model,
            "cluster": "" if cluster is None else str(cluster),
            FEEDBACK_INSTANCE_LABEL: self.instance,
        }
        self.feedback_events.inc(1, labels)
        self.feedback_score.inc(score, labels)

    def logged_feedback(
        self, model: str, cluster: int | None, score: float, propensity: float, held_out: bool
    ) -> None:
        """Feedback ``score`` on an answer whose routing decision had ``propensity``, into the
        split the answer id puts it in (see :mod:`shoal.serving.feedback`)."""
        labels = {
            "fleet": self.fleet,
            "model": model,
            "cluster": "" if cluster is None else str(cluster),
            FEEDBACK_INSTANCE_LABEL: self.instance,
            "split": "heldout" if held_out else "fit",
        }
        weighted = score / propensity
        for stat, value in (
            ("events", 1.0),
            ("score", score),
            ("weight", 1.0 / propensity),
            ("weighted_score", weighted),
            ("weighted_score_sq", weighted * weighted),
        ):
            self.feedback_logged.inc(value, {**labels, "stat": stat})

    def cascade_attempt(self, model: str, outcome: str) -> None:
        self.cascade_attempts.inc(1, {"fleet": self.fleet, "model": model, "outcome": outcome})

    def fallback(self, model: str, reason: str) -> None:
        self.fallbacks.inc(1, {"fleet": self.fleet, "model": model, "reason": reason})

    def reject(self, api: str, code: int) -> None:
        self.rejected.inc(1, {"fleet": self.fleet, "api": api, "code": str(code)})

    def set_in_flight(self, model: str, tier: str, value: int) -> None:
        self.in_flight.set(value, self._mt(model, tier))

    def first_token(self, model: str, tier: str, seconds: float) -> None:
        self.ttft.observe(seconds, self._mt(model, tier))

    def finished(
        self,
        *,
        model: str,
        tier: str,
        api: str,
        code: int,
        seconds: float,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
    ) -> None:
        mt = self._mt(model, tier)
        self.requests.inc(1, {**mt, "api": api, "code": str(code)})
        self.e2e.observe(seconds, mt)
        if prompt_tokens:
            self.tokens.inc(prompt_tokens, {**mt, "kind": "prompt"})
        if completion_tokens:
            self.tokens.inc(completion_tokens, {**mt, "kind": "completion"})
        if cost_usd > 0:
            self.cost.inc(cost_usd, mt)
        if self.reference is not None and (prompt_tokens or completion_tokens):
            self.reference_cost.inc(self.reference.cost(0.0, prompt_tokens, completion_tokens), mt)


class EngineMetrics:
    """Engine-side metrics under an engine's own names (``vllm:`` for the simulator)."""

    def __init__(
        self, model: str, prefix: str = "vllm", backend: Backend = "ray", registry: Any = None
    ) -> None:
        f = _Factory(backend, registry)
        self.registry = f.registry
        self.labels = {"model_name": model}
        lab = ("model_name",)
        p = prefix
        self.running = f.make(
            "gauge", f"{p}:num_requests_running", "Requests in the running batch.", lab
        )
        self.waiting = f.make(
            "gauge", f"{p}:num_requests_waiting", "Requests waiting for a batch slot.", lab
        )
        self.cache = f.make(
            "gauge", f"{p}:gpu_cache_usage_perc", "KV-cache usage (1 means 100 percent).", lab
        )
        self.ttft = f.make(
            "histogram",
            f"{p}:time_to_first_token_seconds",
            "Time to first token.",
            lab,
            LATENCY_BUCKETS,
        )
        self.itl = f.make(
            "histogram",
            f"{p}:time_per_output_token_seconds",
            "Time per output token.",
            lab,
            ITL_BUCKETS,
        )
        self.e2e = f.make(
            "histogram",
            f"{p}:e2e_request_latency_seconds",
            "End-to-end request latency.",
            lab,
            LATENCY_BUCKETS,
        )
        self.prompt_tokens = f.make(
            "counter", f"{p}:prompt_tokens_total", "Prefilled prompt tokens.", lab
        )
        self.generation_tokens = f.make(
            "counter", f"{p}:generation_tokens_total", "Generated tokens.", lab
        )
        self.success = f.make("counter", f"{p}:request_success_total", "Requests finished.", lab)

    def set_load(self, *, running: int, waiting: int, kv_cache_usage: float) -> None:
        self.running.set(running, self.labels)
        self.waiting.set(waiting, self.labels)
        self.cache.set(kv_cache_usage, self.labels)

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds, self.labels)

    def observe_inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds, self.labels)

    def observe_finished(
        self, seconds: float, *, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.e2e.observe(seconds, self.labels)
        self.prompt_tokens.inc(prompt_tokens, self.labels)
        self.generation_tokens.inc(completion_tokens, self.labels)
        self.success.inc(1, self.labels)

    def observe_chunk(
        self,
        *,
        started: float,
        previous: float | None,
        now: float,
        finished: bool,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """One chunk of a generation that began at ``started``: time to first token when
        there was no chunk before (``previous`` None), else the gap since it; the whole
        request when the chunk ends it."""
        if previous is None:
            self.observe_ttft(now - started)
        else:
            self.observe_inter_token(now - previous)
        if finished:
            self.observe_finished(
                now - started, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
