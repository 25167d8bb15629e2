"""The fleet endpoint: OpenAI API in front, ranked models with fallback behind.

:class:`Endpoint` is the ingress logic, free of Ray, in rooms of its own:

- the route table (:mod:`shoal.serving.routes`) sends each path and method to its handler;
- :meth:`Endpoint.generate` parses and limits a request, asks the ranker for an ordered list
  of models (``model: "auto"`` or the fleet's name) or takes the named model, and keeps the
  models that can serve it (:mod:`shoal.serving.capabilities`);
- the fallback caller (:mod:`shoal.serving.fallback`) calls them in turn until one answers,
  and tells the caller who did (``x-shoal-model``, ``x-shoal-cluster``,
  ``x-shoal-routing-ms``);
- the probes (:mod:`shoal.serving.probes`) keep readiness and the in-flight gauge.

:class:`FleetIngress` is the Ray Serve deployment ("router") that holds an :class:`Endpoint`
built from :class:`~shoal.contract.BuildArgs` and the models' deployment handles.

Prompts never reach the logs unless ``log_prompts`` is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.contract import BuildArgs
from shoal.serving import http
from shoal.serving.capabilities import Refusal, capabilities, refusal
from shoal.serving.clients import ModelClient, model_clients
from shoal.serving.exploration import Explorer, explored
from shoal.serving.fallback import FallbackCaller, ModelBook
from shoal.serving.feedback import CompletionIds, parse_feedback
from shoal.serving.metrics import RouterMetrics
from shoal.serving.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    approx_prompt_tokens,
    max_tokens_of,
    model_not_found,
    query_text,
)
from shoal.serving.probes import IN_FLIGHT_PUBLISH_SECONDS, Probes
from shoal.serving.ranking import HealthBoard, Ranker, default_alpha, make_ranker, parse_alpha
from shoal.serving.routes import Route, RouteTable

log = logging.getLogger("shoal.serving.ingress")

ALPHA_HEADER = "x-shoal-alpha"
AUTO = "auto"

__all__ = ["ALPHA_HEADER", "AUTO", "IN_FLIGHT_PUBLISH_SECONDS", "Endpoint", "FleetIngress"]


class Endpoint:
    """The ingress logic (see the module docstring); one per ingress replica."""

    def __init__(
        self,
        args: BuildArgs,
        clients: dict[str, ModelClient],
        metrics: RouterMetrics,
        ranker: Ranker | None = None,
    ) -> None:
        self.args = args
        self.limits = args.limits
        self.clients = clients
        self.metrics = metrics
        self.ranker = ranker or make_ranker(args)
        self.alpha = default_alpha(args)
        self.aliases = {AUTO, args.fleet_name}
        #: "<model>:<adapter>" -> (model, adapter), for LoRA adapters of vLLM models.
        self.adapters = {
            f"{m.name}:{a.name}": (m.name, a.name)
            for m in args.fleet.models
            if m.name in clients
            for a in m.lora_adapters
        }
        self.capabilities = {m.name: capabilities(m) for m in args.fleet.models}
        self.book = ModelBook(clients, HealthBoard(self.limits.unhealthy_cooldown_seconds))
        self.ids = CompletionIds()
        spec = args.policy.exploration
        self.explorer = (
            Explorer(spec, args.ingress.num_replicas) if spec and spec.percent > 0 else None
        )
        self.caller = FallbackCaller(args, self.book, metrics, self.ids)
        self.probes = Probes(args, self.book, metrics)
        self._created = int(time.time())
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

    # -- HTTP -------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
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
        who = self.ids.verify(cid)
        if who.model not in self.clients:
            raise ApiError(400, f"The model {who.model} is not in this fleet.", param="id")
        self.metrics.feedback(who.model, who.cluster, score)
        return http.json_response(
            {"object": "feedback", "id": cid, "model": who.model, "accepted": True}
        )

    async def _models(self, request: Request, _: str) -> Response:
        return http.json_response(self.models_body())

    async def _model(self, request: Request, name: str) -> Response:
        for entry in self.models_body()["data"]:
            if entry["id"] == name:
                return http.json_response(entry)
        raise model_not_found(name)

    async def _health(self, request: Request, _: str) -> Response:
        return http.json_response({"status": "ok"})

    async def _ready(self, request: Request, _: str) -> Response:
        return self.readiness()

    async def _root(self, request: Request, _: str) -> Response:
        return http.json_response({"fleet": self.args.fleet_name, "api": "/v1"})

    def models_body(self) -> dict[str, Any]:
        body = http.models_body([AUTO, *self.clients, *self.adapters], self._created)
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
        try:
            body = await http.read_body(request, self.limits.max_body_bytes)
            parsed = http.parse(api, body, self.limits)
            ranked, headers = await self._rank(parsed, request)
            ranked = self._capable(api, parsed, ranked)
        except ApiError as err:
            self.metrics.reject(api, err.status)
            return http.error_response(err)
        gen = http.generation(parsed, http.new_id(api), self.limits)
        if parsed.model in self.adapters:
            gen = dataclasses.replace(gen, adapter=self.adapters[parsed.model][1])
        if self.args.log_prompts:
            log.info("request %s prompt: %r", gen.request_id, gen.messages or gen.prompt)
        cluster = headers.get("x-shoal-cluster")
        return await self.caller.call(
            api, parsed, gen, ranked, headers, started, int(cluster) if cluster else None
        )

    async def _rank(
        self, parsed: ChatRequest | CompletionRequest, request: Request
    ) -> tuple[list[str], dict[str, str]]:
        name = parsed.model
        if name in self.clients:
            return [name], {}
        if name in self.adapters:
            return [self.adapters[name][0]], {}
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
        text = query_text(parsed)
        started = time.perf_counter()
        if self.ranker.blocking:
            ranking = await asyncio.to_thread(self.ranker.rank, text, alpha)
        else:
            ranking = self.ranker.rank(text, alpha)
        seconds = time.perf_counter() - started
        models = [m for m in ranking.models if m in self.clients]
        if not models:
            raise ApiError(503, "The router ranked no model of this fleet.", type="server_error")
        self.metrics.decision(ranking.strategy, models[0], ranking.cluster, seconds)
        headers = {"x-shoal-routing-ms": f"{seconds * 1000:.3f}"}
        if self.explorer is not None:
            chosen = self.explorer.choose(
                models,
                ranking.scores,
                time.monotonic(),
                lambda m: self.book.cost_per_request.get(m, 0.0),
            )
            if chosen is not None:
                models = explored(models, chosen)
                headers["x-shoal-explored"] = chosen
                self.metrics.exploration(chosen)
        if ranking.cluster is not None:
            headers["x-shoal-cluster"] = str(ranking.cluster)
        if ranking.version is not None:
            headers["x-shoal-router-version"] = str(ranking.version)
        return models, headers

    def _capable(
        self, api: http.Api, parsed: ChatRequest | CompletionRequest, ranked: list[str]
    ) -> list[str]:
        """The ranked models that can serve this request (its parameters, its length); a 400
        that names what is missing when none can."""
        tokens = approx_prompt_tokens(parsed)
        budget = max_tokens_of(parsed, self.limits.default_max_tokens)
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
        self.endpoint = Endpoint(
            parsed, model_clients(parsed, handles), RouterMetrics(parsed.fleet_name, "ray")
        )
        self.endpoint.start_probes()
        log.info(
            "fleet %s: %d models, strategy %s",
            parsed.fleet_name,
            len(handles),
            self.endpoint.ranker.strategy,
        )

    async def __call__(self, request: Request) -> Response:
        return await self.endpoint.handle(request)
