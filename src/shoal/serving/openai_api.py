"""The OpenAI wire format: request validation, response bodies, SSE chunks and errors.

Pure functions and Pydantic models, no I/O: the ingress parses a body with
:func:`parse_chat` / :func:`parse_completion` (which raise :class:`ApiError` with the HTTP
status and OpenAI error body), turns it into an engine-neutral
:class:`~shoal.serving.engines.base.GenerationRequest`, and formats what the engine yields
with the ``*_body`` / ``*_chunk`` functions below, exactly in the shapes the official
``openai`` client parses.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoal.serving.engines.base import Chunk, GenerationRequest

SSE_DONE = b"data: [DONE]\n\n"


class ApiError(Exception):
    """An error the client gets, with its HTTP status and OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}`` as OpenAI sends it."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    """Fields chat and completions share. Unknown fields are ignored, as OpenAI-compatible
    servers do, so newer clients keep working."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return ApiError(400, f"Invalid value for '{loc}': {first.get('msg')}", param=loc or None)


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return data


def _check_common(req: _Common, max_tokens: int | None, limit: int) -> None:
    if req.n != 1:
        raise ApiError(400, "Only n=1 is supported.", param="n")
    if max_tokens is not None and max_tokens > limit:
        raise ApiError(
            400,
            f"max_tokens is too large: {max_tokens}. This endpoint supports at most {limit}.",
            param="max_tokens",
        )
    stops = req.stop_list()
    if len(stops) > 4:
        raise ApiError(400, "At most 4 stop sequences are supported.", param="stop")


def parse_chat(body: bytes, *, max_tokens_limit: int) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body (:class:`ApiError` 400 when invalid)."""
    try:
        req = ChatRequest.model_validate(_load_json(body))
    except ValidationError as exc:
        raise _validation_error(exc) from None
    _check_common(req, req.max_completion_tokens or req.max_tokens, max_tokens_limit)
    if req.tools:
        raise ApiError(400, "Tool calling is not supported by this endpoint.", param="tools")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported by this endpoint.", param="logprobs")
    return req


def parse_completion(body: bytes, *, max_tokens_limit: int) -> CompletionRequest:
    """Validate a ``/v1/completions`` body (:class:`ApiError` 400 when invalid)."""
    try:
        req = CompletionRequest.model_validate(_load_json(body))
    except ValidationError as exc:
        raise _validation_error(exc) from None
    _check_common(req, req.max_tokens, max_tokens_limit)
    if isinstance(req.prompt, list) and len(req.prompt) != 1:
        raise ApiError(400, "Exactly one prompt per request is supported.", param="prompt")
    if req.echo or req.suffix is not None or (req.best_of not in (None, 1)):
        raise ApiError(400, "echo, suffix and best_of are not supported.", param="echo")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported by this endpoint.", param="logprobs")
    return req


def to_generation(
    req: ChatRequest | CompletionRequest, request_id: str, default_max_tokens: int
) -> GenerationRequest:
    """The engine-neutral request."""
    common: dict[str, Any] = {
        "request_id": request_id,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": req.stop_list(),
        "seed": req.seed,
    }
    if isinstance(req, ChatRequest):
        return GenerationRequest(
            kind="chat",
            max_tokens=req.max_completion_tokens or req.max_tokens or default_max_tokens,
            messages=[m.model_dump(exclude_none=True) for m in req.messages],
            **common,
        )
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    # OpenAI's legacy completions default to 16 tokens.
    return GenerationRequest(
        kind="completion", max_tokens=req.max_tokens or 16, prompt=prompt, **common
    )


def query_text(req: ChatRequest | CompletionRequest) -> str:
    """The text the router embeds: the last user message, or the prompt."""
    if isinstance(req, CompletionRequest):
        return req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    for message in reversed(req.messages):
        if message.role == "user":
            if isinstance(message.content, str):
                return message.content
            return "".join(
                str(p.get("text", ""))
                for p in message.content or []
                if isinstance(p, dict) and p.get("type") == "text"
            )
    return ""


# --- responses -------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_body(
    rid: str, created: int, model: str, text: str, finish: str, prompt: int, completion: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage(prompt, completion),
    }


def completion_body(
    rid: str, created: int, model: str, text: str, finish: str, prompt: int, completion: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt, completion),
    }


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class StreamFormatter:
    """Turns engine chunks into OpenAI SSE events for one streamed response."""

    def __init__(
        self,
        kind: Literal["chat", "completion"],
        rid: str,
        created: int,
        model: str,
        include_usage: bool,
    ) -> None:
        self.kind = kind
        self.include_usage = include_usage
        self._head = (
            f'{{"id":"{rid}","object":"'
            + ("chat.completion.chunk" if kind == "chat" else "text_completion")
            + f'","created":{created},"model":{json.dumps(model)},"system_fingerprint":null,'
        )
        self._started = False

    def _event(self, choices: str, usage_json: str | None = None) -> bytes:
        tail = f',"usage":{usage_json}' if usage_json is not None else ""
        return f'data: {self._head}"choices":{choices}{tail}}}\n\n'.encode()

    def chunk(self, chunk: Chunk) -> bytes:
        """Events for one engine chunk (several for the first and the last)."""
        out = b""
        if self.kind == "chat":
            if not self._started:
                out += self._event(
                    '[{"index":0,"delta":{"role":"assistant","content":""},'
                    '"logprobs":null,"finish_reason":null}]'
                )
            if chunk.text:
                out += self._event(
                    '[{"index":0,"delta":{"content":'
                    + json.dumps(chunk.text)
                    + '},"logprobs":null,"finish_reason":null}]'
                )
            if chunk.finish_reason is not None:
                out += self._event(
                    '[{"index":0,"delta":{},"logprobs":null,"finish_reason":"'
                    + chunk.finish_reason
                    + '"}]'
                )
        else:
            if chunk.text or chunk.finish_reason is not None:
                finish = "null" if chunk.finish_reason is None else f'"{chunk.finish_reason}"'
                out += self._event(
                    '[{"text":'
                    + json.dumps(chunk.text)
                    + ',"index":0,"logprobs":null,"finish_reason":'
                    + finish
                    + "}]"
                )
        self._started = True
        if chunk.finish_reason is not None and self.include_usage:
            out += self._event(
                "[]",
                json.dumps(usage(chunk.prompt_tokens or 0, chunk.completion_tokens or 0)),
            )
        return out

    def error(self, err: ApiError) -> bytes:
        """An error event for a stream that broke after it started."""
        return sse(err.body())
