"""How the ingress reaches one model: a small protocol with three implementations.

- :class:`ServeModelClient`: a Shoal model deployment (llama.cpp or the simulator) through
  its Ray Serve handle;
- :class:`LLMServerClient`: a vLLM model served by ``ray.serve.llm``'s LLM server, through
  its handle, translating its OpenAI-shaped output back into engine chunks;
- :class:`LocalModelClient`: an engine in this very process (no Ray), for tests of the
  ingress logic and for tools that embed the endpoint.

Every client raises :class:`ModelOverloaded` when the model refuses for load (Ray Serve's
back-pressure or a full engine queue) and :class:`ModelFailed` for anything else, so the
ingress can decide to fall back without knowing which engine it talked to.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.contract import BuildArgs, deployment_plans
from shoal.serving.engines.base import Chunk, Engine, EngineOverloaded, GenerationRequest


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


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress knows about a model besides how to call it."""

    name: str
    tier: str
    engine: str
    cost_per_replica_hour: float


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
            if _is_overload(exc):
                raise ModelOverloaded(str(exc)) from exc
            raise ModelFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if gen is not None and not done:
                _cancel(gen)

    async def probe(self) -> None:
        await self._probe.remote()


class LLMServerClient:
    """A vLLM model served by ``ray.serve.llm``'s ``LLMServer``, through its handle."""

    def __init__(self, info: ModelInfo, handle: Any, model_id: str) -> None:
        self.info = info
        self.model_id = model_id
        self._chat = handle.options(method_name="chat", stream=True)
        self._completions = handle.options(method_name="completions", stream=True)
        self._health = handle.options(method_name="check_health")

    def _request(self, request: GenerationRequest) -> Any:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        model = f"{self.model_id}:{request.adapter}" if request.adapter else self.model_id
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for key in ("temperature", "top_p", "seed"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = list(request.stop)
        if request.kind == "chat":
            return ChatCompletionRequest(messages=request.messages, **body)
        return CompletionRequest(prompt=request.prompt, **body)

    async def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        method = self._chat if request.kind == "chat" else self._completions
        if request.adapter:
            # Ray Serve LLM routes LoRA requests as multiplexed models "<base>:<adapter>".
            method = method.options(multiplexed_model_id=f"{self.model_id}:{request.adapter}")
        gen: Any = None
        pending: Chunk | None = None
        try:
            gen = method.remote(self._request(request))
            async for batch in gen:
                for item in batch if isinstance(batch, list) else [batch]:
                    for chunk in parse_llm_server_item(item):
                        if pending is not None and pending.finish_reason is not None:
                            # usage arrives after the finish chunk: merge it in
                            pending = Chunk(
                                pending.text + chunk.text,
                                pending.finish_reason,
                                chunk.prompt_tokens or pending.prompt_tokens,
                                chunk.completion_tokens or pending.completion_tokens,
                            )
                            continue
                        if pending is not None:
                            yield pending
                        pending = chunk
            if pending is not None:
                yield pending
        except ModelFailed:
            raise
        except Exception as exc:
            gen = None  # the call is over; nothing left to cancel
            if _is_overload(exc):
                raise ModelOverloaded(str(exc)) from exc
            raise ModelFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if gen is not None:
                _cancel(gen)

    async def probe(self) -> None:
        await self._health.remote()


def parse_llm_server_item(item: Any) -> list[Chunk]:
    """Engine chunks from one item of ``LLMServer.chat``/``completions`` output."""
    if isinstance(item, bytes):
        item = item.decode()
    if not isinstance(item, str):
        data = item.model_dump() if hasattr(item, "model_dump") else item
        if isinstance(data, dict) and "error" in data:
            raise ModelFailed(str(data["error"]))
        raise ModelFailed(f"unexpected LLM server output {type(item).__name__}")
    out: list[Chunk] = []
    for line in item.splitlines():
        if not line.startswith("data: "):
            continue
        payload = line[len("data: ") :].strip()
        if payload == "[DONE]":
            continue
        data = json.loads(payload)
        if "error" in data:
            raise ModelFailed(str(data["error"]))
        usage = data.get("usage") or {}
        choices = data.get("choices") or []
        text = ""
        finish = None
        if choices:
            choice = choices[0]
            if "delta" in choice:
                text = (choice["delta"] or {}).get("content") or ""
            else:
                text = choice.get("text") or ""
            finish = choice.get("finish_reason")
        out.append(
            Chunk(
                text,
                "length" if finish == "length" else ("stop" if finish else None),
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
            )
        )
    return out


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
