"""How the ingress reaches one model: a small protocol with three implementations.

- :class:`ServeModelClient`: a Shoal model deployment (llama.cpp or the simulator) through
  its Ray Serve handle;
- :class:`LLMServerClient`: a vLLM model served by ``ray.serve.llm``'s LLM server, through
  its handle, passing the client's request on and its OpenAI events back;
- :class:`LocalModelClient`: an engine in this very process (no Ray), for tests of the
  ingress logic and for tools that embed the endpoint.

Every client raises :class:`ModelOverloaded` when the model refuses for load (Ray Serve's
back-pressure or a full engine queue), :class:`ModelRejected` when the model cannot serve the
request itself (too long for its context) and :class:`ModelFailed` for anything else, so the
ingress can decide to fall back without knowing which engine it talked to.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.contract import BuildArgs, deployment_plans
from shoal.contract.cost import ModelPrice
from shoal.serving import openai_api
from shoal.serving.engines.base import (
    Chunk,
    Engine,
    EngineOverloaded,
    GenerationRequest,
    RequestRejected,
)


class ModelUnavailable(Exception):
    """The model could not take or finish the request; ``reason`` labels the fallback
    metric: ``overload``, ``error`` or ``timeout``."""

    reason = "error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ModelOverloaded(ModelUnavailable):
    """The model refused for load."""

    reason = "overload"


class ModelFailed(ModelUnavailable):
    """The model failed (replica died, engine error, bad output)."""

    reason = "error"


class ModelRejected(ModelUnavailable):
    """The model cannot serve this request (prompt over its context, a parameter its engine
    cannot honour): the client's error, not the model's, so no cooldown."""

    reason = "rejected"

    def __init__(self, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress knows about a model besides how to call it."""

    name: str
    tier: str
    engine: str
    cost_per_replica_hour: float
    #: How its requests are priced (:mod:`shoal.contract.cost`); None: per replica-hour.
    price: ModelPrice | None = None

    def request_cost(self, seconds: float, sharing: float, prompt: int, completion: int) -> float:
        """USD of one answer (an estimate for the fleet's own models)."""
        price = self.price or ModelPrice(per_replica_hour=self.cost_per_replica_hour)
        return price.cost(seconds, prompt, completion, sharing)


class ModelClient(Protocol):
    info: ModelInfo

    def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        """The generation's chunks; see :meth:`ModelServer.stream` for ``coalesce``."""
        ...

    async def probe(self) -> None:
        """Return when the model can answer (the caller bounds it with a timeout)."""
        ...


def _is_overload(exc: BaseException) -> bool:
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, BackPressureError | EngineOverloaded):
        return True
    cause = getattr(exc, "cause", None)
    return isinstance(cause, BackPressureError | EngineOverloaded)


def _unavailable(exc: BaseException) -> ModelUnavailable:
    """The ingress's view of an error a model call raised (through Ray or in process)."""
    cause = exc if isinstance(exc, RequestRejected) else getattr(exc, "cause", None)
    if isinstance(cause, RequestRejected):
        return ModelRejected(cause.message, cause.code, cause.param)
    if _is_overload(exc):
        return ModelOverloaded(str(exc))
    return ModelFailed(f"{type(exc).__name__}: {exc}")


def _cancel(response: Any) -> None:
    """Cancel a Ray Serve call we stopped reading (client gone, timeout). ``cancel`` re-raises
    the call's own error when it already failed; that is not news here."""
    with contextlib.suppress(Exception):
        response.cancel()


class ServeModelClient:
    """A Shoal model deployment behind a Ray Serve handle."""

    def __init__(self, info: ModelInfo, handle: Any) -> None:
        self.info = info
        # _by_reference=False: results come back over Ray Serve's direct gRPC channel to
        # the replica instead of through the object store, much cheaper per streamed chunk.
        # Plain pickle: requests and chunks are dataclasses of importable modules, which
        # cloudpickle (the default) spends several times longer on, at every streamed chunk.
        fast = {
            "_by_reference": False,
            "request_serialization": "pickle",
            "response_serialization": "pickle",
        }
        self._stream = handle.options(method_name="stream", stream=True, **fast)
        self._probe = handle.options(method_name="probe", **fast)

    async def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        gen: Any = None
        done = False
        try:
            gen = self._stream.remote(request, coalesce)
            async for chunk in gen:
                # Before the yield: a reader that stops at the last chunk closes us there,
                # and a finished call needs no cancelling.
                done = chunk.finish_reason is not None
                yield chunk
            done = True
        except Exception as exc:
            done = True  # the call is over; nothing left to cancel
            raise _unavailable(exc) from exc
        finally:
            if gen is not None and not done:
                _cancel(gen)

    async def probe(self) -> None:
        await self._probe.remote()


class LLMServerClient:
    """A vLLM model served by ``ray.serve.llm``'s ``LLMServer``, through its handle.

    The client's OpenAI request goes to vLLM as it was sent (tools, ``response_format``,
    logprobs, vLLM's own sampling extras). A streamed request is streamed with usage, and
    vLLM's SSE events are forwarded as they are (the usage event only if the client asked
    for it). A request that does not stream goes to vLLM with ``stream: false``: vLLM answers
    with one response, whose body is forwarded with Shoal's answer id in place of vLLM's.

    The call is cancelled only when the reader stops before the answer is complete (the
    client went away, a timeout): a finished call is left alone."""

    #: An unstreamed request's first chunk is the whole answer (read by the fallback caller:
    #: no first-token timeout then, only the request's).
    answers_whole = True

    def __init__(self, info: ModelInfo, handle: Any, model_id: str) -> None:
        self.info = info
        self.model_id = model_id
        self._chat = handle.options(method_name="chat", stream=True)
        self._completions = handle.options(method_name="completions", stream=True)
        self._health = handle.options(method_name="check_health")

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The OpenAI request vLLM gets: the client's, streamed (with usage) only when the
        client streams."""
        model = f"{self.model_id}:{request.adapter}" if request.adapter else self.model_id
        body: dict[str, Any] = {**request.params, "model": model, "max_tokens": request.max_tokens}
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        else:
            body["stream"] = False
        for key in ("temperature", "top_p", "seed"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _request(self, request: GenerationRequest) -> Any:
        from pydantic import ValidationError
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        body = self.body(request)
        try:
            if request.kind == "chat":
                return ChatCompletionRequest(messages=request.messages, **body)
            return CompletionRequest(prompt=request.prompt, **body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first.get("loc", ())) or None
            message = f"vLLM refused the request: {first.get('msg')}"
            raise ModelRejected(message, None, param) from None

    async def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        method = self._chat if request.kind == "chat" else self._completions
        if request.adapter:
            # Ray Serve LLM routes LoRA requests as multiplexed models "<base>:<adapter>".
            method = method.options(multiplexed_model_id=f"{self.model_id}:{request.adapter}")
        gen: Any = None
        done = False
        answer = ServerStream(request)
        try:
            gen = method.remote(self._request(request))
            async for batch in gen:
                for item in batch if isinstance(batch, list) else [batch]:
                    if not request.stream:
                        whole = unary_answer(item, request)
                        # Before the yield: a reader that stops at the answer closes us
                        # there, and a finished call needs no cancelling.
                        done = True
                        yield whole
                        return
                    for event, raw in llm_server_events(item):
                        chunk = answer.feed(event, raw)
                        if chunk is not None:
                            done = chunk.finish_reason is not None
                            yield chunk
            done = True
            last = answer.close()
            if last is not None:
                yield last
            elif not request.stream:
                raise ModelFailed("vLLM gave no answer")
        except ModelUnavailable:
            done = True  # the model answered with an error: the call is over
            raise
        except Exception as exc:
            done = True  # the call is over; nothing left to cancel
            raise _unavailable(exc) from exc
        finally:
            if gen is not None and not done:
                _cancel(gen)

    async def probe(self) -> None:
        await self._health.remote()


def _error(error: Any) -> ModelUnavailable:
    """An error vLLM answered with: the request's fault (400s) or the model's."""
    data = error if isinstance(error, dict) else {"message": str(error)}
    message = str(data.get("message") or data)
    status = data.get("code")
    if status in (400, "400") or data.get("type") in ("BadRequestError", "invalid_request_error"):
        code = "context_length_exceeded" if "context length" in message else None
        return ModelRejected(message, code, data.get("param"))
    return ModelFailed(message)


def llm_server_events(item: Any) -> list[tuple[dict[str, Any], bytes]]:
    """The events of one item of ``LLMServer.chat``/``completions`` output: each event's JSON
    and its wire bytes (``data: ...`` as vLLM wrote it); ``[DONE]`` is left out."""
    if isinstance(item, bytes):
        item = item.decode()
    if not isinstance(item, str):
        data = item.model_dump() if hasattr(item, "model_dump") else item
        if isinstance(data, dict) and "error" in data:
            raise _error(data["error"])
        raise ModelFailed(f"unexpected LLM server output {type(item).__name__}")
    out: list[tuple[dict[str, Any], bytes]] = []
    for line in item.splitlines():
        if not line.startswith("data: "):
            continue
        payload = line[len("data: ") :].strip()
        if payload == "[DONE]":
            continue
        data = json.loads(payload)
        if "error" in data:
            raise _error(data["error"])
        out.append((data, b"data: " + payload.encode() + b"\n\n"))
    return out


def unary_answer(item: Any, request: GenerationRequest) -> Chunk:
    """The one chunk of an unstreamed ``LLMServer.chat``/``completions`` call: vLLM's response
    body as it wrote it (Shoal's answer id in place of its own), with the text, the finish
    reason and the token counts the ingress books."""
    if isinstance(item, bytes | str):  # an error Ray Serve LLM sent as an event
        llm_server_events(item)
        raise ModelFailed("unexpected LLM server output: an event to an unstreamed request")
    error = getattr(item, "error", None)
    if error is not None or type(item).__name__ == "ErrorResponse":
        found = error if error is not None else item
        raise _error(found.model_dump() if hasattr(found, "model_dump") else found)
    choices = getattr(item, "choices", None)
    if not choices or not hasattr(item, "model_dump_json"):
        raise ModelFailed(f"unexpected LLM server output {type(item).__name__}")
    choice = choices[0]
    message = getattr(choice, "message", None)
    text = (getattr(message, "content", None) if message is not None else None) or getattr(
        choice, "text", ""
    )
    usage = getattr(item, "usage", None)
    reason = getattr(choice, "finish_reason", None)
    data = item.model_dump_json().encode()
    their = getattr(item, "id", None)
    if isinstance(their, str) and their != request.request_id:
        # The answer carries Shoal's signed id (for feedback), not the server's own.
        data = data.replace(f'"id":"{their}"'.encode(), f'"id":"{request.request_id}"'.encode(), 1)
    return Chunk(
        text or "",
        reason if reason in ("stop", "length", "tool_calls", "content_filter") else "stop",
        getattr(usage, "prompt_tokens", None),
        getattr(usage, "completion_tokens", None),
        data=data,
    )


class ServerStream:
    """Turns an OpenAI server's streamed events (asked with ``include_usage``) into engine
    chunks: events forwarded as they are when the client streams, one assembled body when
    not; the chunk that ends the answer carries the finish reason and the token counts."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.events: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.held = b""
        self.closed = False

    def feed(self, event: dict[str, Any], raw: bytes) -> Chunk | None:
        their = event.get("id")
        if isinstance(their, str) and their != self.request.request_id:
            # The answer carries Shoal's signed id (for feedback), not the server's own.
            raw = raw.replace(
                f'"id":"{their}"'.encode(), f'"id":"{self.request.request_id}"'.encode(), 1
            )
        choices = event.get("choices") or []
        if choices:
            choice = choices[0]
            text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            if not self.request.stream:
                self.events.append(event)
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
                self.held += raw  # the answer ends with the usage event that follows
                return None
            return Chunk(text, data=raw if self.request.stream else None)
        usage = event.get("usage")
        if usage is not None:
            return self._end(usage, raw if self.request.include_usage else b"")
        return None

    def close(self) -> Chunk | None:
        """The last chunk, where the server sent no usage event after finishing."""
        if self.closed or self.finish is None:
            return None
        return self._end(None, b"")

    def _end(self, usage: dict[str, Any] | None, tail: bytes) -> Chunk:
        self.closed = True
        req = self.request
        use = usage or {}
        prompt, completion = use.get("prompt_tokens"), use.get("completion_tokens")
        reason = self.finish if self.finish in ("stop", "length", "tool_calls") else "stop"
        if req.stream:
            data = self.held + tail
        else:
            build = (
                openai_api.assemble_chat if req.kind == "chat" else openai_api.assemble_completion
            )
            counts = openai_api.usage(prompt or 0, completion or 0)
            body = build(self.events, req.request_id, req.created, req.model_name, counts)
            data = json.dumps(body, separators=(",", ":")).encode()
        return Chunk("", reason, prompt, completion, data=data)  # type: ignore[arg-type]


class LocalModelClient:
    """An engine in this process (no Ray): the ingress logic without a cluster."""

    def __init__(self, info: ModelInfo, engine: Engine) -> None:
        self.info = info
        self.engine = engine

    async def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        try:
            async for chunk in self.engine.generate(request):
                yield chunk
        except EngineOverloaded as exc:
            raise ModelOverloaded(str(exc)) from exc
        except RequestRejected as exc:
            raise ModelRejected(exc.message, exc.code, exc.param) from exc
        except Exception as exc:
            raise ModelFailed(f"{type(exc).__name__}: {exc}") from exc

    async def probe(self) -> None:
        await self.engine.check_health()


def model_clients(args: BuildArgs, handles: dict[str, Any]) -> dict[str, ModelClient]:
    """Ingress-side clients over the models' deployment handles (called in the ingress)."""
    clients: dict[str, ModelClient] = {}
    for plan in deployment_plans(args):
        model = args.model(plan.model)
        info = ModelInfo(
            name=model.name,
            tier=plan.tier,
            engine=model.engine,
            cost_per_replica_hour=float(plan.cost_per_replica_hour),
        )
        handle = handles[model.name]
        if model.engine == "vllm":
            clients[model.name] = LLMServerClient(info, handle, model.name)
        else:
            clients[model.name] = ServeModelClient(info, handle)
    return clients
