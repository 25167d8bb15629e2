"""The fleet endpoint: OpenAI API in front, ranked models with fallback behind.

:class:`Endpoint` is the ingress logic, free of Ray, in rooms of its own:

- the route table (:mod:`shoal.serving.routes`) sends each path and method to its handler;
- :meth:`Endpoint.generate` parses and limits a request, asks the ranker for an ordered list
  of models (``model: "auto"`` or the fleet's name) or takes the named model, and keeps the
  models that can serve it (:mod:`shoal.serving.capabilities`);
- with a ``cascade`` in the policy, a routed request goes to the cascade stage
  (:mod:`shoal.serving.cascade`): the first model answers, its answer is checked, the next
  ranked model is called only when it needs to;
- the spillover stage (:mod:`shoal.serving.spillover`) puts the next-best model first while
  the router's choice would break its latency objective (policy ``spillover``);
- the fallback caller (:mod:`shoal.serving.fallback`) calls them in turn until one answers,
  and tells the caller who did (``x-shoal-model``, ``x-shoal-cluster``,
  ``x-shoal-routing-ms``);
- the probes (:mod:`shoal.serving.probes`) keep readiness and the in-flight gauge;
- a LoRA adapter is a model of its own, ``<model>:<adapter>`` (:mod:`shoal.serving.adapters`),
  which clients name and the ranker may rank;
- when the fleet declares tenants (:meth:`Endpoint.configure_access`, from the ingress's
  ``user_config``), the tenant gate (:mod:`shoal.serving.tenants`) authenticates every
  ``/v1`` request before any route runs, admits it against its tenant's limits and budget
  (:mod:`shoal.serving.admission`: request counts before the body is read, tokens before
  the router ranks), lowers its alpha as the budget runs out, and keeps the ranked list to
  the tenant's models; an open fleet skips all of it.

:class:`FleetIngress` is the Ray Serve deployment ("router") that holds an :class:`Endpoint`
built from :class:`~shoal.contract.BuildArgs` and the models' deployment handles; Ray Serve
hands it the fleet's access config through ``reconfigure`` (in place, no restart).

Prompts never reach the logs unless ``log_prompts`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.contract import AccessConfig, BuildArgs
from shoal.contract.cost import reference_price
from shoal.contract.lora import adapter_routes
from shoal.serving import http
from shoal.serving.adapters import adapter_clients, base_model
from shoal.serving.admission import Admission
from shoal.serving.capabilities import Refusal, capabilities, refusal
from shoal.serving.cascade import CascadeStage
from shoal.serving.clients import ModelClient, model_clients
from shoal.serving.exploration import Explorer, explored
from shoal.serving.external import external_clients
from shoal.serving.fallback import FallbackCaller, ModelBook
from shoal.serving.feedback import (
    CompletionIds,
    FeedbackLedger,
    bind_tenant,
    logged_decision,
    parse_feedback,
)
from shoal.serving.metrics import RouterMetrics
from shoal.serving.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    approx_prompt_tokens,
    model_not_found,
    query_text,
    window_budget,
)
from shoal.serving.probes import IN_FLIGHT_PUBLISH_SECONDS, Probes
from shoal.serving.ranking import HealthBoard, Ranker, default_alpha, make_ranker, parse_alpha
from shoal.serving.restore import restorer_from_env
from shoal.serving.routes import Route, RouteTable, relative_path
from shoal.serving.spillover import ReplicaCounts, SpilloverStage, ray_replica_counts
from shoal.serving.tenants import TenantGate, TenantRefused, TenantState, Ticket, model_denied
from shoal.serving.usage import LocalStore, RayStore, StoreClient, UsageSync, store_name

log = logging.getLogger("shoal.serving.ingress")

ALPHA_HEADER = "x-shoal-alpha"
AUTO = "auto"
#: Where the ingress keeps an authenticated request's tenant (the ASGI scope).
TENANT_SCOPE = "shoal.tenant"

__all__ = ["ALPHA_HEADER", "AUTO", "IN_FLIGHT_PUBLISH_SECONDS", "Endpoint", "FleetIngress"]


class Endpoint:
    """The ingress logic (see the module docstring); one per ingress replica."""

    def __init__(
        self,
        args: BuildArgs,
        clients: dict[str, ModelClient],
        metrics: RouterMetrics,
        ranker: Ranker | None = None,
        store: Callable[[], StoreClient] = LocalStore,
        replicas: ReplicaCounts | None = None,
    ) -> None:
        self.args = args
        self.limits = args.limits
        #: "<model>:<adapter>" -> (model, adapter), for LoRA adapters of vLLM models; each
        #: is a model of its own to the request path (serving/adapters.py).
        self.adapters = {r: ma for r, ma in adapter_routes(args.fleet).items() if ma[0] in clients}
        clients = {**clients, **adapter_clients(args, clients)}
        self.clients = clients
        self.metrics = metrics
        metrics.reference = reference_price(args.fleet)
        self.ranker = ranker or make_ranker(args)
        self.alpha = default_alpha(args)
        self.aliases = {AUTO, args.fleet_name}
        self.capabilities = {m.name: capabilities(m) for m in args.fleet.models}
        self.capabilities.update({r: self.capabilities[m] for r, (m, _) in self.adapters.items()})
        self.book = ModelBook(clients, HealthBoard(self.limits.unhealthy_cooldown_seconds))
        self.ids = CompletionIds()
        self.feedback_ledger = FeedbackLedger()
        spec = args.policy.exploration
        self.explorer = (
            Explorer(spec, args.ingress.num_replicas) if spec and spec.percent > 0 else None
        )
        self.caller = FallbackCaller(args, self.book, metrics, self.ids)
        #: The policy's cascade (serving/cascade.py); None: the fallback caller alone.
        self.cascade = (
            CascadeStage(
                args,
                args.policy.cascade,
                self.caller,
                metrics,
                self.capabilities,
                lambda: getattr(self.ranker, "cascade_plan", None),
                lambda: self.gate,
                getattr(self.ranker, "rank_similarity", None),
            )
            if args.policy.cascade is not None
            else None
        )
        self.spillover = SpilloverStage(
            args, self.book, metrics, getattr(self.ranker, "quality_of", None), replicas
        )
        self.admission = Admission(lambda: self.usage_sync)
        self.probes = Probes(args, self.book, metrics)
        self._created = int(time.time())
        #: The tenant gate; None while the fleet is open (nothing checked, nothing counted).
        self.gate: TenantGate | None = None
        self.usage_sync: UsageSync | None = None
        self._store = store
        self.replica_id = uuid.uuid4().hex
        self._watch_task: asyncio.Task[None] | None = None
        self.routes = RouteTable(
            [
                Route("POST", "/v1/chat/completions", self._chat),
                Route("POST", "/v1/completions", self._completion),
                Route("POST", "/v1/feedback", self._feedback),
                Route("GET", "/v1/models", self._models),
                Route("GET", "/v1/models", self._model, prefix=True),
                Route("GET", "/health", self._health),
                Route("GET", "/healthz", self._health),
                Route("GET", "/ready", self._ready),
                Route("GET", "/readyz", self._ready),
                Route("GET", "/", self._root),
            ]
        )

    # -- the books, as the autoscaler's gauge and the tests read them ------------------------

    @property
    def in_flight(self) -> dict[str, int]:
        return self.book.in_flight

    @property
    def ready(self) -> set[str]:
        return self.book.ready

    @property
    def health(self) -> HealthBoard:
        return self.book.health

    def start_probes(self) -> None:
        """Start the background work: readiness probes, publishing the in-flight gauge, and
        following the router artifact file (a new version is swapped in place)."""
        self.probes.start()
        watch = getattr(self.ranker, "watch", None)
        if watch is not None and self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(watch())

    def publish_in_flight(self) -> None:
        self.probes.publish_in_flight()

    async def probe_once(self) -> None:
        await self.probes.probe_once()

    # -- tenants ----------------------------------------------------------------------------

    async def configure_access(self, config: AccessConfig) -> None:
        """Apply the fleet's access config at once (Ray Serve's ``reconfigure``): tenants that
        remain keep their counters; ``mode: open`` drops the gate."""
        if config.mode == "open":
            self.gate = None
            if self.usage_sync is not None:
                await self.usage_sync.stop()
                self.usage_sync = None
            return
        if self.gate is None:
            gate = TenantGate(
                config,
                replicas=self.args.ingress.num_replicas,
                max_request_seconds=self.limits.request_timeout_seconds + 60.0,
            )
            # A store that starts empty (new, or lost with its actor or the Ray head) gets
            # the tenants' recent usage from Prometheus first (shoal.serving.restore).
            restore = restorer_from_env(self.args.namespace, self.args.fleet_name)
            self.usage_sync = UsageSync(gate, self._store(), self.replica_id, restore)
            self.gate = gate
            await self.usage_sync.sync_once()  # the fleet-wide view before the first request
            self.usage_sync.start()
        else:
            self.gate.configure(config)

    def _authenticate(self, request: Request, gate: TenantGate) -> Response | None:
        """401 unless a ``/v1`` request bears a tenant's key (kept in the scope)."""
        path = relative_path(request)
        if not path.startswith("/v1/"):
            return None
        try:
            request.scope[TENANT_SCOPE] = gate.authenticate(request.headers.get("authorization"))
        except ApiError as err:
            self.metrics.reject(http.api_of(path) or "other", err.status)
            return http.error_response(err)
        return None

    # -- HTTP -------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        gate = self.gate
        if gate is not None:
            refused = self._authenticate(request, gate)
            if refused is not None:
                return refused
        return await self.routes.dispatch(request)

    async def _chat(self, request: Request, _: str) -> Response:
        return await self.generate("chat", request)

    async def _completion(self, request: Request, _: str) -> Response:
        return await self.generate("completion", request)

    async def _feedback(self, request: Request, _: str) -> Response:
        """``{"id", "score"}`` on one of the fleet's answers: counted for its model and
        cluster (the router's refit reads the counts); the text of nothing is kept."""
        body = await http.read_body(request, self.limits.max_body_bytes)
        cid, score = parse_feedback(body)
        tenant: TenantState | None = request.scope.get(TENANT_SCOPE)
        name = tenant.spec.name if tenant is not None else ""
        who = self.ids.verify(cid, name)  # ids are bound to the tenant that got the answer
        self.feedback_ledger.admit(cid, who, name, time.time())  # once per id, rate-limited
        if who.model not in self.clients:
            raise ApiError(400, f"The model {who.model} is not in this fleet.", param="id")
        self.metrics.feedback(who.model, who.cluster, score)
        if (logged := logged_decision(cid)) is not None:  # propensity-weighted, for the guard
            self.metrics.logged_feedback(who.model, who.cluster, score, *logged)
        return http.json_response(
            {"object": "feedback", "id": cid, "model": who.model, "accepted": True}
        )

    async def _models(self, request: Request, _: str) -> Response:
        return http.json_response(self.models_body(request.scope.get(TENANT_SCOPE)))

    async def _model(self, request: Request, name: str) -> Response:
        for entry in self.models_body(request.scope.get(TENANT_SCOPE))["data"]:
            if entry["id"] == name:
                return http.json_response(entry)
        raise model_not_found(name)

    async def _health(self, request: Request, _: str) -> Response:
        return http.json_response({"status": "ok"})

    async def _ready(self, request: Request, _: str) -> Response:
        return self.readiness()

    async def _root(self, request: Request, _: str) -> Response:
        return http.json_response({"fleet": self.args.fleet_name, "api": "/v1"})

    def models_body(self, tenant: TenantState | None = None) -> dict[str, Any]:
        names = [AUTO, *self.clients]
        if tenant is not None and tenant.spec.models is not None:
            allowed = tenant.spec.models
            names = [n for n in names if n == AUTO or n.partition(":")[0] in allowed]
        body = http.models_body(names, self._created)
        for entry in body["data"]:
            base, _, adapter = entry["id"].partition(":")
            client = self.clients.get(base)
            if client is None:
                entry["shoal"] = {"routes": self.ranker.strategy}
                version = getattr(self.ranker, "version", None)
                if version is not None:
                    entry["shoal"]["router_version"] = version
            else:
                entry["shoal"] = {"tier": client.info.tier, "engine": client.info.engine}
                if adapter:
                    entry["shoal"]["adapter_of"] = base
        return body

    def readiness(self) -> Response:
        return self.probes.readiness()

    # -- generation -------------------------------------------------------------------------

    async def generate(self, api: http.Api, request: Request) -> Response:
        started = time.perf_counter()
        gate = self.gate
        tenant: TenantState | None = request.scope.get(TENANT_SCOPE) if gate else None
        ticket: Ticket | None = None
        try:
            if tenant is not None and gate is not None:
                # Request-count limits before the body is read (see serving/admission.py).
                ticket = await self.admission.request(gate, tenant)
            body = await http.read_body(request, self.limits.max_body_bytes)
            parsed = http.parse(api, body, self.limits)
            if ticket is not None and gate is not None:
                await self.admission.tokens(gate, ticket, approx_prompt_tokens(parsed))
            ranked, headers, similarity = await self._rank(parsed, request, tenant)
            ranked = self._capable(api, parsed, ranked)
            if ticket is not None:
                headers.update(ticket.headers)
        except ApiError as err:
            self.metrics.reject(api, err.status)
            if tenant is not None:
                self._tenant_refused(tenant, err)
            if ticket is not None and gate is not None:
                gate.finish(ticket, None, 0.0)
            return http.error_response(err)
        except BaseException:
            if ticket is not None and gate is not None:
                gate.finish(ticket, None, 0.0)
            raise
        gen = http.generation(parsed, http.new_id(api), self.limits)
        if self.args.log_prompts:
            log.info("request %s prompt: %r", gen.request_id, gen.messages or gen.prompt)
        cluster = headers.get("x-shoal-cluster")
        routed = parsed.model in self.aliases
        if routed:  # spill over while the first choice queues (before any cascade)
            ranked = self.spillover.route(ranked, headers, int(cluster) if cluster else None)
        done = self._tenant_done(gate, ticket) if ticket is not None and gate is not None else None
        bind_tenant(tenant.spec.name if tenant is not None else "")  # the ids' tenant
        cascade = self.cascade
        try:
            if cascade is not None and routed and cascade.applies(parsed, tenant):
                return await cascade.call(
                    api, parsed, gen, ranked, headers, int(cluster) if cluster else None, done,
                    tenant, similarity,
                )  # fmt: skip
            return await self.caller.call(
                api, parsed, gen, ranked, headers, started, int(cluster) if cluster else None, done
            )
        except BaseException:
            if ticket is not None and gate is not None:
                gate.finish(ticket, None, 0.0)
            raise

    def _tenant_refused(self, tenant: TenantState, err: ApiError) -> None:
        name = tenant.spec.name
        if isinstance(err, TenantRefused):
            self.metrics.tenant_rejected(name, err.reason, err.status)
        else:
            self.metrics.tenant_finished(name, "", err.status, 0, 0, 0.0)

    def _tenant_done(
        self, gate: TenantGate, ticket: Ticket
    ) -> Callable[[str | None, int, int | None, int | None, float], None]:
        metrics = self.metrics
        name = ticket.tenant.spec.name

        def done(
            model: str | None, code: int, prompt: int | None, completion: int | None, cost: float
        ) -> None:
            tokens = None if prompt is None else prompt + (completion or 0)
            gate.finish(ticket, tokens, cost)
            metrics.tenant_finished(name, model or "", code, prompt or 0, completion or 0, cost)

        return done

    async def _rank(
        self,
        parsed: ChatRequest | CompletionRequest,
        request: Request,
        tenant: TenantState | None = None,
    ) -> tuple[list[str], dict[str, str], tuple[float, ...] | None]:
        """The models that may answer, best first, the routing headers, and the query's
        similarity to each router centroid (None: not routed by clusters)."""
        name = parsed.model
        allowed = tenant.spec.models if tenant is not None else None
        if name in self.clients:
            if allowed is not None and base_model(name) not in allowed:
                raise model_denied(name)
            return [name], {}, None
        if name not in self.aliases:
            raise model_not_found(name)
        alpha = self.alpha
        override = request.headers.get(ALPHA_HEADER)
        if override is not None and self.args.policy.allow_request_overrides:
            try:
                alpha = parse_alpha(override)
            except ValueError:
                raise ApiError(
                    400, f"{ALPHA_HEADER} must be a number within [0, 1].", param=ALPHA_HEADER
                ) from None
        if tenant is not None and self.gate is not None:
            # The tenant's floor and ceiling bound any alpha, an override too; nearing its
            # budget lowers it towards the floor.
            alpha = self.gate.alpha(tenant, alpha)
        text = query_text(parsed)
        started = time.perf_counter()
        if self.ranker.blocking:
            ranking = await asyncio.to_thread(self.ranker.rank, text, alpha)
        else:
            ranking = self.ranker.rank(text, alpha)
        seconds = time.perf_counter() - started
        models = [m for m in ranking.models if m in self.clients]
        if allowed is not None:
            models = [m for m in models if base_model(m) in allowed]
            if not models:
                raise TenantRefused(
                    "model", 403, "This API key may use no model of this fleet.",
                    code="model_not_allowed",
                )  # fmt: skip
        if not models:
            raise ApiError(503, "The router ranked no model of this fleet.", type="server_error")
        self.metrics.decision(ranking.strategy, models[0], ranking.cluster, seconds)
        headers = {"x-shoal-routing-ms": f"{seconds * 1000:.3f}"}
        if tenant is not None:
            headers["x-shoal-alpha"] = f"{alpha:.4f}"
        if self.explorer is not None:
            chosen, propensity = self.explorer.decide(
                models,
                ranking.scores,
                time.monotonic(),
                lambda m: self.book.cost_per_request.get(m, 0.0),
            )
            headers["x-shoal-propensity"] = f"{propensity:.4f}"
            if chosen is not None:
                models = explored(models, chosen)
                headers["x-shoal-explored"] = chosen
                self.metrics.exploration(chosen)
        if ranking.cluster is not None:
            headers["x-shoal-cluster"] = str(ranking.cluster)
        if ranking.version is not None:
            headers["x-shoal-router-version"] = str(ranking.version)
        return models, headers, ranking.similarity

    def _capable(
        self, api: http.Api, parsed: ChatRequest | CompletionRequest, ranked: list[str]
    ) -> list[str]:
        """The ranked models that can serve this request (its parameters, its length); a 400
        that names what is missing when none can."""
        tokens = approx_prompt_tokens(parsed)
        budget = window_budget(parsed)
        capable: list[str] = []
        first: tuple[str, Refusal] | None = None
        for model in ranked:
            why = refusal(self.capabilities[model], api, parsed.body, tokens, budget)
            if why is None:
                capable.append(model)
            elif first is None:
                first = (model, why)
        if capable:
            for model in ranked:
                if model in capable:
                    break
                self.metrics.fallback(model, "incapable")
            return capable
        assert first is not None
        model, why = first
        named = parsed.model not in self.aliases
        message = (
            f"{why.message} (model {model})"
            if named
            else f"No model of this fleet can serve this request: {why.message}"
        )
        raise ApiError(400, message, param=why.param, code=why.code)


class FleetIngress:
    """The Ray Serve ingress deployment ("router"): an :class:`Endpoint` over handles."""

    async def __init__(self, args: dict[str, Any], handles: dict[str, Any]) -> None:  # type: ignore[misc]
        parsed = BuildArgs.parse(args)
        name = store_name(parsed.fleet_name, parsed.namespace)
        replicas = None
        if parsed.policy.spillover is not None and parsed.policy.spillover.enabled:
            replicas = ray_replica_counts(parsed)
        self.endpoint = Endpoint(
            parsed,
            {**model_clients(parsed, handles), **external_clients(parsed)},
            RouterMetrics(parsed.fleet_name, "ray"),
            store=lambda: RayStore(name),
            replicas=replicas,
        )
        self.endpoint.start_probes()
        if replicas is not None:
            replicas.start()
        log.info(
            "fleet %s: %d models, strategy %s",
            parsed.fleet_name,
            len(handles),
            self.endpoint.ranker.strategy,
        )

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve's in-place update: the fleet's tenants, key digests and limits."""
        config = AccessConfig.from_user_config(user_config)
        await self.endpoint.configure_access(config)
        log.info(
            "fleet %s: access %s, %d tenants",
            self.endpoint.args.fleet_name,
            config.mode,
            len(config.tenants),
        )

    async def __call__(self, request: Request) -> Response:
        return await self.endpoint.handle(request)
