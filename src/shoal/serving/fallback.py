"""Calling the models of a ranked list in turn until one answers: the ingress's fallback.

:class:`FallbackCaller` takes a request the ingress has parsed, ranked and checked against
the models' capabilities, and calls the first candidate that is healthy and not over its
queue limit, moving down the list when a model refuses for load, fails, gives no first token
in time, or rejects the request itself (too long for it: no cooldown then). It answers 503
with ``Retry-After`` only when no model could take the request, and 400 when every model
tried rejected it. It keeps the books the autoscaler and the probes read
(:class:`ModelBook`): requests in flight per model, health, who answered lately.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.responses import Response

from shoal.contract import BuildArgs
from shoal.serving import http
from shoal.serving.clients import ModelClient, ModelRejected, ModelUnavailable
from shoal.serving.engines.base import Chunk, GenerationRequest
from shoal.serving.feedback import CompletionIds, decision_propensity, logged_prefix
from shoal.serving.metrics import RouterMetrics
from shoal.serving.openai_api import ApiError, ChatRequest, CompletionRequest
from shoal.serving.ranking import HealthBoard

log = logging.getLogger("shoal.serving.ingress")

#: Told once when a request is over: the model that answered (None: none did), the status,
#: the prompt and completion tokens the engine counted (None when unknown) and the cost.
Done = Callable[[str | None, int, int | None, int | None, float], None]


@dataclass
class ModelBook:
    """What one ingress replica knows of its models now."""

    clients: dict[str, ModelClient]
    health: HealthBoard
    in_flight: dict[str, int] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)
    last_ok: dict[str, float] = field(default_factory=dict)
    #: Recent cost of one answered request per model (USD, a moving average).
    cost_per_request: dict[str, float] = field(default_factory=dict)
    #: Recent seconds a request holds one of a model's slots (a moving average), for
    #: spillover's estimate (:mod:`shoal.serving.spillover`): a request sent while the model
    #: had nothing else in flight waited for nothing, so its whole time counts (prefill
    #: included, and an unstreamed answer told whole); otherwise a streamed request's time
    #: from its first token to its last (what came before may have been a wait).
    service_seconds: dict[str, float] = field(default_factory=dict)
    #: Recent time to first token of models served outside the fleet (a moving average).
    first_token_seconds: dict[str, float] = field(default_factory=dict)

    def observe_service(self, model: str, seconds: float, weight: float = 0.1) -> None:
        _average(self.service_seconds, model, seconds, weight)

    def observe_first_token(self, model: str, seconds: float, weight: float = 0.1) -> None:
        _average(self.first_token_seconds, model, seconds, weight)

    def record_cost(self, model: str, cost: float, weight: float = 0.1) -> None:
        before = self.cost_per_request.get(model)
        self.cost_per_request[model] = cost if before is None else before + weight * (cost - before)

    def __post_init__(self) -> None:
        self.in_flight = {**dict.fromkeys(self.clients, 0), **self.in_flight}


def _average(values: dict[str, float], key: str, value: float, weight: float) -> None:
    before = values.get(key)
    values[key] = value if before is None else before + weight * (value - before)


class FallbackCaller:
    """The fallback loop over ranked candidates (see the module docstring)."""

    def __init__(
        self,
        args: BuildArgs,
        book: ModelBook,
        metrics: RouterMetrics,
        ids: CompletionIds | None = None,
    ) -> None:
        self.args = args
        self.limits = args.limits
        self.book = book
        self.metrics = metrics
        self.ids = ids or CompletionIds()

    async def call(
        self,
        api: http.Api,
        parsed: ChatRequest | CompletionRequest,
        gen: GenerationRequest,
        ranked: list[str],
        headers: dict[str, str],
        started: float,
        cluster: int | None = None,
        done: Done | None = None,
    ) -> Response:
        """The answer of the first candidate that gives one, or the error that says why none
        did. Each answer's id is signed with the model and ``cluster`` (for feedback);
        ``done`` is told when the request is over (a stream: when it ends)."""
        prefix = "chatcmpl-" if api == "chat" else "cmpl-"
        rid = gen.request_id
        deadline = time.monotonic() + self.limits.request_timeout_seconds
        candidates = self.candidates(ranked)
        last_error: ModelUnavailable | None = None
        only_rejected = True  # every model tried refused the request itself
        for i, model in enumerate(candidates):
            client = self.book.clients[model]
            logged = logged_prefix(prefix, decision_propensity(headers, cluster, i))
            rid = self.ids.issue(logged, model, cluster)
            idle = self.book.in_flight[model] == 0  # nothing ahead of it (see service_seconds)
            dispatched = time.perf_counter()
            try:
                first, rest = await self._first_chunk(
                    client,
                    dataclasses.replace(gen, request_id=rid, model_name=model),
                    not parsed.streaming,
                    (api, started, done),
                    self._first_timeout(client, parsed.streaming, deadline),
                )
            except ModelUnavailable as exc:
                last_error = exc
                only_rejected &= isinstance(exc, ModelRejected)
                self._unavailable(model, exc, rid, more=i + 1 < len(candidates))
                continue
            ttft = time.perf_counter() - started
            first_at = started + ttft
            holds_from = dispatched if idle else first_at  # the slot's time, as far as known
            self.metrics.first_token(model, client.info.tier, ttft)
            if client.info.price is not None:  # served outside the fleet: no slots to wait for
                self.book.observe_first_token(model, ttft)
            self._ok(model)
            out_headers = {**headers, "x-shoal-model": model}
            if parsed.streaming:
                return self._stream(
                    api, parsed, rid, client, first, rest, out_headers, started, deadline, done,
                    holds_from,
                )  # fmt: skip
            try:
                text, last = await http.collect(first, rest, deadline)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # The client went away during the answer: billed for the model's work
                    # until now, out of the in-flight count, the model's call cancelled.
                    self._abandoned(client, api, started, done)
                    await _close(rest)
                    raise
                await _close(rest)  # the model's call, when it is not over
                if isinstance(exc, ModelUnavailable):
                    failure = exc
                elif isinstance(exc, TimeoutError):
                    failure = ModelUnavailable("no complete answer in time", "timeout")
                elif isinstance(exc, ApiError):
                    failure = ModelUnavailable(exc.message)
                else:
                    failure = ModelUnavailable(f"{type(exc).__name__}: {exc}")
                last_error = failure
                only_rejected &= isinstance(failure, ModelRejected)
                self._unavailable(model, failure, rid, more=i + 1 < len(candidates))
                self._done(model)
                continue
            if idle or not getattr(client, "answers_whole", False):  # else: a wait, or not
                self.book.observe_service(model, time.perf_counter() - holds_from)
            self._finished(client, api, started, last, done)
            await _close(rest)  # over: its client has nothing left to cancel
            return http.completion_response(api, rid, model, text, last, out_headers)
        if isinstance(last_error, ModelRejected) and only_rejected:
            # Every model that got the request refused it as too long or not servable: the
            # client's error, said as the engine said it.
            self.metrics.reject(api, 400)
            if done is not None:
                done(None, 400, None, None, 0.0)
            refused = ApiError(400, str(last_error), param=last_error.param, code=last_error.code)
            return http.error_response(refused, headers)
        self.metrics.reject(api, 503)
        if done is not None:
            done(None, 503, None, None, 0.0)
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

    async def whole_answer(
        self,
        api: http.Api,
        client: ModelClient,
        gen: GenerationRequest,
        first_timeout: float,
        deadline: float,
        done: Done | None = None,
    ) -> tuple[str, Chunk]:
        """One model's whole answer to an unstreamed request, for a caller that judges the
        answer before anyone sees it (the cascade, :mod:`shoal.serving.cascade`). The books
        are kept as in :meth:`call`: the model is in flight while it answers, its health
        follows the outcome, and its time is billed through ``done`` when it answers, or
        when the caller is cancelled. Raises :class:`ModelUnavailable` when it gives no whole
        answer in time (counted in the fallback metric by :meth:`unavailable`)."""
        model = client.info.name
        started = time.perf_counter()
        first, rest = await self._first_chunk(
            client, gen, True, (api, started, done), first_timeout
        )
        self._ok(model)
        try:
            text, last = await http.collect(first, rest, deadline)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._abandoned(client, api, started, done)
                await _close(rest)
                raise
            await _close(rest)
            self._done(model)
            if isinstance(exc, ModelUnavailable):
                raise
            if isinstance(exc, TimeoutError):
                raise ModelUnavailable("no complete answer in time", "timeout") from None
            message = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            raise ModelUnavailable(message) from exc
        self._finished(client, api, started, last, done)
        await _close(rest)
        return text, last

    def unavailable(self, model: str, exc: ModelUnavailable, rid: str, more: bool) -> None:
        """Count and log a model that could not answer (its health too, unless it refused
        for load or rejected the request itself)."""
        self._unavailable(model, exc, rid, more)

    def candidates(self, ranked: list[str]) -> list[str]:
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
        out = self.book.health.candidates(ranked, limit)
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
        self,
        client: ModelClient,
        gen: GenerationRequest,
        coalesce: bool,
        request: tuple[http.Api, float, Done | None],
        timeout: float,
    ) -> tuple[Chunk, AsyncIterator[Chunk]]:
        """The model's first chunk and the rest of its stream; the model counts as in flight
        from here until the request is over. ``request`` (its API, start and ``done``) bills
        it when the caller is cancelled here."""
        model = client.info.name
        self.book.in_flight[model] += 1
        stream = client.stream(gen, coalesce)
        try:
            first = await asyncio.wait_for(anext(stream), timeout)
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
        except BaseException:
            # Cancelled: the client went away before the first token. The model's call is
            # cancelled with the stream, and the request is billed for its wait.
            self._abandoned(client, *request)
            await _close(stream)
            raise
        return first, stream

    def _first_timeout(self, client: ModelClient, streaming: bool, deadline: float) -> float:
        """How long to wait for a model's first chunk: ``first_token_timeout_seconds``, or,
        for a client that asks its engine for an unstreamed request's answer whole (vLLM's
        ``stream: false``: the first chunk is the answer), the rest of the request's time."""
        timeout = self.limits.first_token_timeout_seconds
        if not streaming and getattr(client, "answers_whole", False):
            timeout = max(timeout, deadline - time.monotonic())
        return timeout

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
        done: Done | None = None,
        holds_from: float | None = None,
    ) -> Response:
        """The streamed answer; ``holds_from``: since when the request held a model's slot
        (:attr:`ModelBook.service_seconds`), None: not measured."""
        model = client.info.name

        def on_finish(last: Chunk | None, error: BaseException | None) -> None:
            if last is not None:
                if holds_from is not None:
                    self.book.observe_service(model, time.perf_counter() - holds_from)
                self._finished(client, api, started, last, done)
            elif not isinstance(error, Exception):  # the client went away mid-stream
                self._abandoned(client, api, started, done)
            else:
                self._done(model)
                if done is not None:
                    done(model, 502, None, None, 0.0)
                self.book.health.failed(model)
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
            self.book.health.failed(model)
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
        self.book.health.succeeded(model)
        self.book.ready.add(model)
        self.book.last_ok[model] = time.monotonic()

    def _done(self, model: str) -> None:
        self.book.in_flight[model] = max(0, self.book.in_flight[model] - 1)

    def _cost(
        self,
        client: ModelClient,
        seconds: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> float:
        """One request's dollars (:meth:`ModelInfo.request_cost`): per token for a model served
        outside the fleet; for the fleet's own, the replica time it held, shared among the
        model's requests in flight (this one included). Called before it leaves the count."""
        sharing = max(1, self.book.in_flight[client.info.name])
        return client.info.request_cost(seconds, sharing, prompt_tokens, completion_tokens)

    def _abandoned(
        self, client: ModelClient, api: str, started: float, done: Done | None = None
    ) -> None:
        """The client went away (before the first token, mid-stream, or during a unary
        answer): the model's call is cancelled by the caller, the request leaves the in-flight
        count, and the replica time it held until then is billed to it (499)."""
        model = client.info.name
        seconds = time.perf_counter() - started
        cost = self._cost(client, seconds)
        self._done(model)
        self.metrics.finished(
            model=model,
            tier=client.info.tier,
            api=api,
            code=499,
            seconds=seconds,
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=cost,
        )
        if done is not None:
            done(model, 499, None, None, cost)

    def _finished(
        self, client: ModelClient, api: str, started: float, last: Chunk, done: Done | None = None
    ) -> None:
        model = client.info.name
        seconds = time.perf_counter() - started
        cost = self._cost(client, seconds, last.prompt_tokens or 0, last.completion_tokens or 0)
        self._done(model)
        self.book.record_cost(model, cost)
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
        if done is not None:
            done(model, 200, last.prompt_tokens, last.completion_tokens, cost)


async def _close(stream: AsyncIterator[Chunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
