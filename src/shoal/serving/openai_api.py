"""The OpenAI wire format: request validation, response bodies, SSE chunks and errors.

Pure functions and Pydantic models, no I/O: the ingress parses a body with
:func:`parse_chat` / :func:`parse_completion` (which raise :class:`ApiError` with the HTTP
status and OpenAI error body). Only what Shoal reads is validated here (model, messages or
prompt, stream, token limits, sampling); the request's other parameters stay in
:attr:`_Common.body` and travel to the engine in the
:class:`~shoal.serving.engines.base.GenerationRequest` (:func:`to_generation`), after the
ingress checked them against the model's capabilities. Engines that only generate text have
it formatted by the ``*_body`` functions and :class:`StreamFormatter`, exactly in the shapes
the official ``openai`` client parses; :func:`assemble_chat` and :func:`assemble_completion`
build a unary body from an engine's own streamed chunks.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, ValidationError

from shoal.serving.capabilities import NO_EFFECT, READ_BY_INGRESS
from shoal.serving.engines.base import Chunk, GenerationRequest, approx_tokens, render_messages

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
    include_usage: bool | None = False


class _Common(BaseModel):
    """Fields chat and completions share, as far as Shoal reads them. Every other field stays
    in :attr:`body` for the engine; the ingress checks it against the chosen model's
    capabilities (and refuses, naming it, what that engine cannot honour)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    _body: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        """The request as the client sent it (JSON)."""
        return self._body

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def params(self) -> dict[str, Any]:
        """The client's parameters that Shoal does not read itself, for the engine."""
        return {
            k: v for k, v in self._body.items() if k not in READ_BY_INGRESS and k not in NO_EFFECT
        }

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: ToolFunction


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return ApiError(400, f"Invalid value for '{loc}': {first.get('msg')}", param=loc or None)


#: Deepest nesting of objects and arrays a request body may have (JSON schemas of tools and
#: response formats included); deeper bodies are a 400, never a recursion error further on.
MAX_JSON_DEPTH = 64


def _depth(data: Any) -> int:
    """How deep objects and arrays nest in ``data`` (0: a scalar), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend(
                (c, depth + 1) for c in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def load_json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object (400 in OpenAI's shape when it is not one, or when it
    nests deeper than :data:`MAX_JSON_DEPTH`)."""
    too_deep = ApiError(
        400, f"The JSON body of your request nests deeper than {MAX_JSON_DEPTH} levels."
    )
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    except RecursionError:  # deeper than the parser itself goes
        raise too_deep from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    if _depth(data) > MAX_JSON_DEPTH:
        raise too_deep
    return data


def _check_common(req: _Common, max_tokens: int | None, limit: int) -> None:
    if req.n not in (None, 1):
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
    data = load_json_object(body)
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    req._body = data
    _check_common(req, req.max_completion_tokens or req.max_tokens, max_tokens_limit)
    if isinstance(req.tool_choice, dict):
        name = (req.tool_choice.get("function") or {}).get("name")
        if name not in {t.function.name for t in req.tools or []}:
            raise ApiError(
                400,
                f"tool_choice names a function that is not in tools: {name!r}.",
                param="tool_choice",
            )
    return req


def parse_completion(body: bytes, *, max_tokens_limit: int) -> CompletionRequest:
    """Validate a ``/v1/completions`` body (:class:`ApiError` 400 when invalid)."""
    data = load_json_object(body)
    try:
        req = CompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    req._body = data
    _check_common(req, req.max_tokens, max_tokens_limit)
    if isinstance(req.prompt, list) and len(req.prompt) != 1:
        raise ApiError(400, "Exactly one prompt per request is supported.", param="prompt")
    if req.best_of not in (None, 1):
        raise ApiError(400, "Only best_of=1 is supported.", param="best_of")
    return req


def max_tokens_of(req: ChatRequest | CompletionRequest, default_max_tokens: int) -> int:
    """The completion budget of a request (OpenAI's legacy completions default to 16)."""
    if isinstance(req, ChatRequest):
        return req.max_completion_tokens or req.max_tokens or default_max_tokens
    return req.max_tokens or 16


def to_generation(
    req: ChatRequest | CompletionRequest,
    request_id: str,
    default_max_tokens: int,
    model_name: str = "",
    created: int = 0,
) -> GenerationRequest:
    """The request for the engine: what Shoal read, and the client's other parameters."""
    common: dict[str, Any] = {
        "request_id": request_id,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": req.stop_list(),
        "seed": req.seed,
        "params": req.params(),
        "stream": req.streaming,
        "include_usage": req.include_usage,
        "model_name": model_name or req.model,
        "created": created,
    }
    if isinstance(req, ChatRequest):
        parallel = req.body.get("parallel_tool_calls")
        return GenerationRequest(
            kind="chat",
            max_tokens=max_tokens_of(req, default_max_tokens),
            messages=[m.model_dump(exclude_none=True) for m in req.messages],
            parallel_tool_calls=parallel if isinstance(parallel, bool) else None,
            **common,
        )
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    return GenerationRequest(
        kind="completion", max_tokens=max_tokens_of(req, default_max_tokens), prompt=prompt,
        **common,
    )  # fmt: skip


def approx_prompt_tokens(req: ChatRequest | CompletionRequest) -> int:
    """A tokenizer-free estimate of the prompt's length (for the context-window check; the
    engine checks exactly, and a model that finds it too long passes it on). A chat's tools
    and response schema count too: the engine puts them in the prompt or its grammar."""
    if isinstance(req, CompletionRequest):
        return approx_tokens(req.prompt if isinstance(req.prompt, str) else req.prompt[0])
    text = render_messages([m.model_dump(exclude_none=True) for m in req.messages])
    extra = {k: req.body[k] for k in ("tools", "response_format") if req.body.get(k)}
    return approx_tokens(text + (json.dumps(extra) if extra else ""))


def window_budget(req: ChatRequest | CompletionRequest) -> int:
    """The completion tokens a request needs room for in a model's context window: what it
    asked for, or (asking for none: the answer may run to the window's end) one token."""
    if isinstance(req, ChatRequest):
        return req.max_completion_tokens or req.max_tokens or 1
    return req.max_tokens or 16


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
            + f'","created":{created},"model":{json.dumps(model)},'
        )
        self._started = False

    def _event(self, choices: str, usage_json: str | None = None) -> bytes:
        tail = f',"usage":{usage_json}' if usage_json is not None else ""
        return f'data: {self._head}"choices":{choices}{tail}}}\n\n'.encode()

    def chunk(self, chunk: Chunk) -> bytes:
        """Events for one engine chunk (several for the first and the last); an engine's
        own wire bytes go out as they are."""
        if chunk.data is not None:
            self._started = True
            return chunk.data
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


# --- an engine's own streamed chunks -> one unary body ------------------------------------------


def _merge_tool_calls(into: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        index = int(delta.get("index", len(into)))
        while len(into) <= index:
            into.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = into[index]
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        fn = delta.get("function") or {}
        if fn.get("name") and not call["function"]["name"]:  # named in the first delta
            call["function"]["name"] = fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]


def _is_json(text: Any) -> bool:
    try:
        json.loads(text)
    except (TypeError, ValueError):
        return False
    return True


def assemble_chat(
    chunks: list[dict[str, Any]], rid: str, created: int, model: str, usage_: dict[str, int]
) -> dict[str, Any]:
    """A ``chat.completion`` body from an engine's ``chat.completion.chunk`` objects: content
    joined, tool calls merged by index, logprobs appended, the last finish reason."""
    content: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] | None = None
    finish: str | None = None
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            if delta.get("tool_calls"):
                _merge_tool_calls(tool_calls, delta["tool_calls"])
            lp = choice.get("logprobs")
            if lp and lp.get("content") is not None:
                logprobs = (logprobs or []) + list(lp["content"])
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if finish == "length":
        # A call cut by max_tokens has cut arguments: the answer carries none of it.
        tool_calls = [c for c in tool_calls if _is_json((c.get("function") or {}).get("arguments"))]
        if tool_calls and not "".join(content).strip():
            # Whole calls, and nothing after them but the whitespace a grammar allows until
            # the token limit: the answer is those calls.
            finish = "tool_calls"
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(content) if content or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None if logprobs is None else {"content": logprobs},
                "finish_reason": finish or "stop",
            }
        ],
        "usage": usage_,
    }


def assemble_completion(
    chunks: list[dict[str, Any]], rid: str, created: int, model: str, usage_: dict[str, int]
) -> dict[str, Any]:
    """A ``text_completion`` body from an engine's streamed ``text_completion`` objects."""
    text: list[str] = []
    logprobs: dict[str, list[Any]] | None = None
    finish: str | None = None
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            text.append(choice.get("text") or "")
            lp = choice.get("logprobs")
            if lp:
                logprobs = logprobs or {
                    "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []
                }  # fmt: skip
                for key in logprobs:
                    logprobs[key].extend(lp.get(key) or [])
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"text": "".join(text), "index": 0, "logprobs": logprobs,
             "finish_reason": finish or "stop"}
        ],
        "usage": usage_,
    }  # fmt: skip


def usage_event(kind: Literal["chat", "completion"], rid: str, created: int, model: str,
                usage_: dict[str, int]) -> bytes:  # fmt: skip
    """The last event of a stream whose client asked for ``include_usage``."""
    return sse(
        {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage_,
        }
    )
