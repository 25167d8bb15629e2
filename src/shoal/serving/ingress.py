"""The fleet endpoint: OpenAI API in front, ranked models with fallback behind.

:class:`Endpoint` is the ingress logic, free of Ray: it parses and limits requests, asks the
ranker for an ordered list of models (``model: "auto"`` or the fleet's name) or takes the
named model, and calls the first model that is healthy and not over its queue limit,
moving down the list when a model refuses for load, fails, or gives no first token in time.
It answers 503 with ``Retry-After`` only when no model could take the request, and tells
the caller who answered (``x-shoal-model``, ``x-shoal-cluster``, ``x-shoal-routing-ms``).

:class:`FleetIngress` is the Ray Serve deployment ("router") that holds an :class:`Endpoint`
built from :class:`~shoal.contract.BuildArgs` and the models' deployment handles.

Prompts never reach the logs unless ``log_prompts`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.contract import BuildArgs
from shoal.serving import http
from shoal.serving.capabilities import Refusal, capabilities, refusal
from shoal.serving.clients import ModelClient, ModelRejected, ModelUnavailable, model_clients
from shoal.serving.engines.base import Chunk, GenerationRequest
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
from shoal.serving.ranking import HealthBoard, Ranker, default_alpha, make_ranker, parse_alpha

log = logging.getLogger("shoal.serving.ingress")

ALPHA_HEADER = "x-shoal-alpha"
#: How often the ingress publishes the per-model in-flight gauge (the autoscaler reads it).
IN_FLIGHT_PUBLISH_SECONDS = 1.0
AUTO = "auto"


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
        self.health = HealthBoard(self.limits.unhealthy_cooldown_seconds)
        self.aliases = {AUTO, args.fleet_name}
        #: "<model>:<adapter>" -> (model, adapter), for LoRA adapters of vLLM models.
        self.adapters = {
            f"{m.name}:{a.name}": (m.name, a.name)
            for m in args.fleet.models
            if m.name in clients
            for a in m.lora_adapters
        }
        self.capabilities = {m.name: capabilities(m) for m in args.fleet.models}
        self.in_flight = dict.fromkeys(clients, 0)
        self.ready: set[str] = set()
        self._last_ok: dict[str, float] = {}
        self._created = int(time.time())
        self._probe_task: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None
        self._published_in_flight: dict[str, int] = {}

    # -- HTTP dispatch ----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        method = request.method
        try:
            api = http.api_of(path)
            if api is not None:
                if method != "POST":
                    raise http.method_not_allowed(path, "POST")
                return await self.generate(api, request)
            if method != "GET":
                if path.endswith("/v1/models") or "/v1/models/" in path:
                    raise http.method_not_allowed(path, "GET")
                raise http.not_found(path)
            if path.endswith("/v1/models"):
                return http.json_response(self.models_body())
            if "/v1/models/" in path:
                name = path.rsplit("/v1/models/", 1)[1]
                for entry in self.models_body()["data"]:
                    if entry["id"] == name:
                        return http.json_response(entry)
                raise model_not_found(name)
            if path in ("/health", "/healthz"):
                return http.json_response({"status": "ok"})
            if path in ("/ready", "/readyz"):
                return self.readiness()
            if path == "/":
                return http.json_response({"fleet": self.args.fleet_name, "api": "/v1"})
            raise http.not_found(path)
        except ApiError as err:
            return http.error_response(err)

    def models_body(self) -> dict[str, Any]:
        body = http.models_body([AUTO, *self.clients, *self.adapters], self._created)
        for entry in body["data"]:
            base, _, adapter = entry["id"].partition(":")
            client = self.clients.get(base)
            if client is None:
                entry["shoal"] = {"routes": self.ranker.strategy}
            else:
                entry["shoal"] = {"tier": client.info.tier, "engine": client.info.engine}
                if adapter:
                    entry["shoal"]["adapter_of"] = base
        return body

    def readiness(self) -> Response:
        ready = sorted(self.ready)
        body = {
            "ready": bool(ready),
            "models": {m: m in self.ready for m in self.clients},
            "unhealthy": self.health.unhealthy(),
        }
        return http.json_response(body, 200 if ready else 503)

    # -- generation -------------------------------------------------------------------------

    async def generate(self, api: http.Api, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await http.read_body(request, self.limits.max_body_bytes)
            parsed = http.parse(api, body, self.limits)
            ranked, headers = await self._rank(parsed, request)
        except ApiError as err:
            self.metrics.reject(api, err.status)
            return http.error_response(err)
        rid = http.new_id(api)
        gen = http.generation(parsed, rid, self.limits)
        ranked = self._capable(api, parsed, ranked)
        if parsed.model in self.adapters:
            gen = dataclasses.replace(gen, adapter=self.adapters[parsed.model][1])
        if self.args.log_prompts:
            log.info("request %s prompt: %r", rid, gen.messages or gen.prompt)
        deadline = time.monotonic() + self.limits.request_timeout_seconds
        candidates = self._candidates(ranked)
        last_error: ModelUnavailable | None = None
        only_rejected = True  # every model tried refused the request itself
        for i, model in enumerate(candidates):
            client = self.clients[model]
            try:
                first, rest = await self._first_chunk(
                    client, dataclasses.replace(gen, model_name=model), not parsed.streaming
                )
            except ModelUnavailable as exc:
                last_error = exc
                only_rejected &= isinstance(exc, ModelRejected)
                self._unavailable(model, exc, rid, more=i + 1 < len(candidates))
                continue
            ttft = time.perf_counter() - started
            self.metrics.first_token(model, client.info.tier, ttft)
            self._ok(model)
            out_headers = {**headers, "x-shoal-model": model}
            if parsed.streaming:
                return self._stream(
                    api, parsed, rid, client, first, rest, out_headers, started, deadline
                )
            try:
                text, last = await http.collect(first, rest, deadline)
            except (ModelUnavailable, TimeoutError, ApiError) as exc:
                if isinstance(exc, ModelUnavailable):
                    failure = exc
                elif isinstance(exc, TimeoutError):
                    failure = ModelUnavailable("no complete answer in time", "timeout")
                else:
                    failure = ModelUnavailable(exc.message)
                last_error = failure
                only_rejected &= isinstance(failure, ModelRejected)
                self._unavailable(model, failure, rid, more=i + 1 < len(candidates))
                self._done(model)
                continue
            self._finished(client, api, started, last)
            return http.completion_response(api, rid, model, text, last, out_headers)
        if isinstance(last_error, ModelRejected) and only_rejected:
            # Every model that got the request refused it as too long or not servable: the
            # client's error, said as the engine said it.
            self.metrics.reject(api, 400)
            refused = ApiError(400, str(last_error), param=last_error.param, code=last_error.code)
            return http.error_response(refused, headers)
        self.metrics.reject(api, 503)
        reason = f" (last error: {last_error.reason})" if last_error else ""
        return http.error_response(
            ApiError(
                503,
                f"No model of the fleet could take the request{reason}; retry later.",
                type="server_error",
                code="overloaded",
                headers={"retry-after": str(self.limits.retry_after_seconds)},
            ),
            headers,
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
        if ranking.cluster is not None:
            headers["x-shoal-cluster"] = str(ranking.cluster)
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

    def _candidates(self, ranked: list[str]) -> list[str]:
        limit = 1 + self.limits.max_fallbacks
        # Parked models (scaled to zero) are passed over while another model can answer; the
        # router's choice still counts in the decisions metric, which is the demand that
        # brings a parked model back.
        awake = [m for m in ranked if m not in self.args.parked] or ranked
        for model in ranked:
            if model in awake:
                break
            self.metrics.fallback(model, "parked")
        ranked = awake
        out = self.health.candidates(ranked, limit)
        fallback = self.args.policy.fallback_model
        if fallback and fallback in ranked and fallback not in out:
            out.append(fallback)
        # A model skipped because it failed recently is a fallback too.
        for model in ranked:
            if model in out:
                break
            self.metrics.fallback(model, "unhealthy")
        return out

    async def _first_chunk(
        self, client: ModelClient, gen: GenerationRequest, coalesce: bool
    ) -> tuple[Chunk, AsyncIterator[Chunk]]:
        model = client.info.name
        self.in_flight[model] += 1
        stream = client.stream(gen, coalesce)
        try:
            first = await asyncio.wait_for(anext(stream), self.limits.first_token_timeout_seconds)
        except ModelUnavailable:
            await _close(stream)
            self._done(model)
            raise
        except TimeoutError:
            await _close(stream)
            self._done(model)
            raise ModelUnavailable("no first token in time", "timeout") from None
        except StopAsyncIteration:
            self._done(model)
            raise ModelUnavailable("empty answer") from None
        except Exception as exc:  # a client that let something unexpected through
            await _close(stream)
            self._done(model)
            raise ModelUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return first, stream

    def _stream(
        self,
        api: http.Api,
        parsed: ChatRequest | CompletionRequest,
        rid: str,
        client: ModelClient,
        first: Chunk,
        rest: AsyncIterator[Chunk],
        headers: dict[str, str],
        started: float,
        deadline: float,
    ) -> Response:
        model = client.info.name

        def on_finish(last: Chunk | None, error: BaseException | None) -> None:
            if last is not None:
                self._finished(client, api, started, last)
            else:
                self._done(model)
                if isinstance(error, Exception):  # not a client that went away
                    self.health.failed(model)
                    self.metrics.finished(
                        model=model,
                        tier=client.info.tier,
                        api=api,
                        code=502,
                        seconds=time.perf_counter() - started,
                        prompt_tokens=0,
                        completion_tokens=0,
                        cost_usd=0.0,
                    )

        return http.sse_response(
            api, rid, model, parsed.include_usage, first, rest, headers, deadline, on_finish
        )

    # -- bookkeeping ------------------------------------------------------------------------

    def _unavailable(self, model: str, exc: ModelUnavailable, rid: str, more: bool) -> None:
        reason = exc.reason
        if reason not in ("overload", "rejected"):  # a refused request says nothing of health
            self.health.failed(model)
        self.metrics.fallback(model, reason)
        log.log(
            logging.DEBUG if reason == "overload" else logging.WARNING,
            "request %s: model %s unavailable (%s: %s)%s",
            rid,
            model,
            reason,
            exc,
            ", trying the next one" if more else "",
        )

    def _ok(self, model: str) -> None:
        self.health.succeeded(model)
        self.ready.add(model)
        self._last_ok[model] = time.monotonic()

    def _done(self, model: str) -> None:
        self.in_flight[model] = max(0, self.in_flight[model] - 1)

    def _finished(self, client: ModelClient, api: str, started: float, last: Chunk) -> None:
        model = client.info.name
        sharing = max(1, self.in_flight[model])
        self._done(model)
        seconds = time.perf_counter() - started
        cost = client.info.cost_per_replica_hour / 3600.0 * seconds / sharing
        self.metrics.finished(
            model=model,
            tier=client.info.tier,
            api=api,
            code=200,
            seconds=seconds,
            prompt_tokens=last.prompt_tokens or 0,
            completion_tokens=last.completion_tokens or 0,
            cost_usd=cost,
        )

    # -- readiness probes -------------------------------------------------------------------

    def start_probes(self) -> None:
        """Start the background work: readiness probes, and publishing the in-flight gauge."""
        if self._probe_task is None:
            loop = asyncio.get_running_loop()
            self._probe_task = loop.create_task(self._probe_loop())
            self._gauge_task = loop.create_task(self._gauge_loop())

    def publish_in_flight(self) -> None:
        """Set the in-flight gauge of every model whose count changed since the last call.

        Published every :data:`IN_FLIGHT_PUBLISH_SECONDS` rather than on every request: a
        Ray metric update costs about as much CPU as routing the request, and the metrics
        agent exports far less often than once a second anyway."""
        for model, value in self.in_flight.items():
            if self._published_in_flight.get(model) != value:
                self.metrics.set_in_flight(model, self.clients[model].info.tier, value)
                self._published_in_flight[model] = value

    async def _gauge_loop(self) -> None:
        while True:
            self.publish_in_flight()
            await asyncio.sleep(IN_FLIGHT_PUBLISH_SECONDS)

    async def probe_once(self) -> None:
        """Probe every model that has not answered within the probe interval."""
        interval = self.limits.health_probe_interval_seconds
        now = time.monotonic()
        stale = [
            m
            for m in self.clients
            if m not in self.args.parked and now - self._last_ok.get(m, -1e9) > interval
        ]  # a probe would wake a parked model

        async def one(model: str) -> None:
            try:
                await asyncio.wait_for(self.clients[model].probe(), timeout=interval)
            except Exception:
                self.ready.discard(model)
            else:
                self.ready.add(model)
                self._last_ok[model] = time.monotonic()

        await asyncio.gather(*(one(m) for m in stale))

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # pragma: no cover - a probe round must never kill the loop
                log.exception("probe round failed")
            await asyncio.sleep(self.limits.health_probe_interval_seconds)


async def _close(stream: AsyncIterator[Chunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


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
