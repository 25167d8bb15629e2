"""How the ingress reaches a model served outside the fleet (``engine: openai``).

:class:`ExternalModelClient` is a :class:`~shoal.serving.clients.ModelClient` over HTTP: it
sends the client's OpenAI request to the model's ``external.baseUrl`` (the client's own
parameters passed through: tools, ``response_format``, logprobs), always streamed with usage,
under the upstream model name, and turns the endpoint's SSE events into the ingress's chunks
with the same :class:`~shoal.serving.clients.ServerStream` the vLLM client uses: a streaming
client gets the endpoint's events as they are (the answer's id replaced by the fleet's signed
one), a unary client one assembled body.

Failures become the fallback's business, never a hang:

- no connection within ``connectTimeoutSeconds``, no event within
  ``firstTokenTimeoutSeconds``, or an answer longer than ``requestTimeoutSeconds``:
  :class:`~shoal.serving.clients.ModelUnavailable` (``timeout``) or ``ModelFailed``;
- 401/403 (a key refused), 404, 5xx: ``ModelFailed`` with the status and the endpoint's own
  message; 429 and more than ``maxConcurrentRequests`` in flight: ``ModelOverloaded``;
- 400: ``ModelRejected`` (the client's fault, said as the endpoint said it).

The API key is read from the file the operator mounts for the model
(:data:`~shoal.contract.MODEL_KEYS_DIR`/<model>, only where the Secret's owner marked it for
the endpoint's host), sent only as the ``Authorization`` header to that one origin (redirects
are not followed), and never logged or put in an error message. Built by
:func:`external_clients` in the ingress (:mod:`shoal.serving.ingress`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from shoal.api.v1alpha1 import ModelSpec
from shoal.api.v1alpha1.external import ExternalModel
from shoal.contract import MODEL_KEYS_DIR, MODEL_KEYS_DIR_ENV, BuildArgs
from shoal.contract.cost import token_price
from shoal.serving import openai_api
from shoal.serving.clients import (
    ModelFailed,
    ModelInfo,
    ModelOverloaded,
    ModelRejected,
    ModelUnavailable,
    ServerStream,
)
from shoal.serving.engines.base import Chunk, GenerationRequest, approx_tokens, render_messages

log = logging.getLogger("shoal.serving.external")

#: Bytes of an endpoint's error body kept for the message.
MAX_ERROR_BYTES = 4096


def keys_dir() -> Path:
    """Where the external models' API keys are (one file per model)."""
    return Path(os.environ.get(MODEL_KEYS_DIR_ENV) or MODEL_KEYS_DIR)


def read_key(model: str) -> str | None:
    """The API key mounted for ``model`` (None: none mounted)."""
    try:
        key = (keys_dir() / model).read_text().strip()
    except OSError:
        return None
    return key or None


class ExternalModelClient:
    """A model served by an OpenAI-compatible endpoint outside the fleet."""

    def __init__(
        self,
        info: ModelInfo,
        spec: ExternalModel,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.info = info
        self.spec = spec
        self.base_url = spec.base_url.rstrip("/")
        self.host = (urlsplit(spec.base_url).hostname or "").lower()
        self.in_flight = 0
        timeout = httpx.Timeout(
            connect=float(spec.connect_timeout_seconds),
            read=float(spec.first_token_timeout_seconds),
            write=float(spec.first_token_timeout_seconds),
            pool=float(spec.connect_timeout_seconds),
        )
        self._http = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            transport=transport,
            limits=httpx.Limits(max_connections=spec.max_concurrent_requests),
        )

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self.spec.api_key_secret_ref is None:
            return headers
        key = read_key(self.info.name)
        if key is None:
            ref = self.spec.api_key_secret_ref
            raise ModelFailed(
                f"no API key for model {self.info.name}: Secret {ref.name!r} (key {ref.key!r}) "
                "is not mounted; the operator mounts it only when its owner labels it "
                f"shoal.dev/model-key=true and lists {self.host!r} in shoal.dev/allowed-hosts"
            )
        headers["authorization"] = f"Bearer {key}"
        return headers

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            **request.params,
            "model": self.spec.model,
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
            body["messages"] = request.messages
        else:
            body["prompt"] = request.prompt
        return body

    async def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        if self.in_flight >= self.spec.max_concurrent_requests:
            raise ModelOverloaded(
                f"{self.spec.max_concurrent_requests} requests already in flight to "
                f"{self.info.name} (external.maxConcurrentRequests)"
            )
        self.in_flight += 1
        try:
            async for chunk in self._stream(request):
                yield chunk
        finally:
            self.in_flight -= 1

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        path = "/chat/completions" if request.kind == "chat" else "/completions"
        url = self.base_url + path
        deadline = time.monotonic() + self.spec.request_timeout_seconds
        answer = ServerStream(request)
        text: list[str] = []
        headers = self._headers()
        try:
            async with self._http.stream(
                "POST", url, json=self._body(request), headers=headers
            ) as resp:
                if resp.status_code != 200:
                    raise await self._refusal(resp)
                async for line in resp.aiter_lines():
                    if time.monotonic() > deadline:
                        raise ModelUnavailable(
                            f"{self.info.name} took longer than "
                            f"{self.spec.request_timeout_seconds} s (external."
                            "requestTimeoutSeconds)",
                            "timeout",
                        )
                    event = _event(line)
                    if event is None:
                        continue
                    # The fleet's signed id and the model name the client addressed, not the
                    # endpoint's own (which may name the upstream model).
                    event["id"] = request.request_id
                    if request.model_name:
                        event["model"] = request.model_name
                    raw = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
                    chunk = answer.feed(event, b"data: " + raw.encode() + b"\n\n")
                    if chunk is None:
                        continue
                    text.append(chunk.text)
                    if chunk.finish_reason is not None:
                        yield self._counted(request, chunk, text, answer)
                        return
                    yield chunk
            last = answer.close()
            if last is None:
                raise ModelFailed(f"{self.info.name} ended its answer without a finish reason")
            yield self._counted(request, last, text, answer)
        except httpx.TimeoutException as exc:
            raise ModelUnavailable(
                f"{self.info.name} ({self.host}) did not answer in time ({type(exc).__name__})",
                "timeout",
            ) from None
        except httpx.HTTPError as exc:
            raise ModelFailed(
                f"cannot reach {self.info.name} at {self.host}: {type(exc).__name__}"
            ) from None

    def _counted(
        self, request: GenerationRequest, last: Chunk, text: list[str], answer: ServerStream
    ) -> Chunk:
        """The last chunk with token counts: the endpoint's, or an estimate where it sent
        no usage (so that the request is still billed, and a client that asked for usage
        gets it)."""
        if last.prompt_tokens is not None and last.completion_tokens is not None:
            return last
        shown = render_messages(request.messages) if request.kind == "chat" else request.prompt
        prompt = last.prompt_tokens or approx_tokens(shown)
        completion = last.completion_tokens or approx_tokens("".join(text))
        counts = openai_api.usage(prompt, completion)
        name, rid = request.model_name, request.request_id
        if request.stream:
            data = last.data or b""
            if request.include_usage:
                data += openai_api.usage_event(request.kind, rid, request.created, name, counts)
        else:
            build = (
                openai_api.assemble_chat
                if request.kind == "chat"
                else openai_api.assemble_completion
            )
            body = build(answer.events, rid, request.created, name, counts)
            data = json.dumps(body, separators=(",", ":")).encode()
        return dataclasses.replace(
            last, prompt_tokens=prompt, completion_tokens=completion, data=data
        )

    async def _refusal(self, resp: httpx.Response) -> ModelUnavailable:
        raw = b""
        async for part in resp.aiter_bytes():
            raw += part
            if len(raw) >= MAX_ERROR_BYTES:
                break
        message, param, code = _error_fields(raw[:MAX_ERROR_BYTES])
        status = resp.status_code
        said = f"{self.info.name} ({self.host}) answered {status}: {message}"
        if status == 400:
            return ModelRejected(_redacted(message, self.info.name), code, param)
        if status == 429:
            return ModelOverloaded(said)
        if status in (401, 403):
            # Not the endpoint's own words: some quote part of the key they refused.
            return ModelFailed(
                f"{self.info.name} ({self.host}) refused the API key ({status}); check the "
                "Secret its apiKeySecretRef names"
            )
        return ModelFailed(_redacted(said, self.info.name))

    async def probe(self) -> None:
        """Ready when the endpoint lists its models (with the key)."""
        resp = await self._http.get(self.base_url + "/models", headers=self._headers())
        if resp.status_code != 200:
            raise ModelFailed(f"{self.info.name}: GET /models answered {resp.status_code}")

    async def aclose(self) -> None:
        await self._http.aclose()


def _redacted(text: str, model: str) -> str:
    """``text`` without the model's key, should an endpoint quote it back."""
    key = read_key(model)
    return text.replace(key, "[redacted]") if key else text


def _event(line: str) -> dict[str, Any] | None:
    """One SSE ``data:`` line's JSON (None for anything else and ``[DONE]``)."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        raise ModelFailed("the endpoint sent an event that is not JSON") from None
    if not isinstance(data, dict):
        raise ModelFailed("the endpoint sent an event that is not a JSON object")
    if "error" in data:
        raise ModelFailed(f"the endpoint failed mid-answer: {_fields(data['error'])[0]}")
    return data


def _fields(error: Any) -> tuple[str, str | None, str | None]:
    if isinstance(error, dict):
        return (
            str(error.get("message") or error)[:1000],
            error.get("param") if isinstance(error.get("param"), str) else None,
            error.get("code") if isinstance(error.get("code"), str) else None,
        )
    return str(error)[:1000], None, None


def _error_fields(raw: bytes) -> tuple[str, str | None, str | None]:
    """OpenAI's error shape (``{"error": {"message", "param", "code"}}``) or the raw text."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:1000] or "(no body)", None, None
    if isinstance(data, dict) and "error" in data:
        return _fields(data["error"])
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])[:1000], None, None
    return str(data)[:1000], None, None


def external_info(args: BuildArgs, model: ModelSpec) -> ModelInfo:
    """What the ingress knows of an external model besides how to call it."""
    assert model.external is not None
    price = token_price(model.external.price)
    return ModelInfo(
        name=model.name,
        tier=model.tier,
        engine=model.engine,
        cost_per_replica_hour=0.0,
        price=price,
    )


def external_clients(
    args: BuildArgs, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, ExternalModelClient]:
    """A client for every model of the fleet served outside it."""
    return {
        m.name: ExternalModelClient(external_info(args, m), m.external, transport)
        for m in args.fleet.external_models()
        if m.external is not None
    }


async def close_all(clients: dict[str, Any]) -> None:
    """Close the HTTP connections of the external clients among ``clients``."""
    await asyncio.gather(
        *(c.aclose() for c in clients.values() if isinstance(c, ExternalModelClient)),
        return_exceptions=True,
    )
