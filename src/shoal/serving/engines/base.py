"""The one small protocol every engine implements, and the values that cross it.

A model deployment (:mod:`shoal.serving.model_server`) owns one :class:`Engine`; the ingress
sends it a :class:`GenerationRequest` and relays the :class:`Chunk` s it yields. Both are
plain dataclasses so they cross Ray's process boundary cheaply.

The request carries what the ingress read (kind, token limit, messages or prompt, sampling)
and, in ``params``, the rest of the client's OpenAI parameters for the engine to honour
(tools, ``response_format``, logprobs, penalties, ...): Shoal passes the OpenAI request
through rather than reducing it. An engine that implements the OpenAI API itself (llama.cpp
through llama-cpp-python, vLLM) writes the answer's wire bytes into :attr:`Chunk.data`, with
its own fields (``tool_calls``, ``logprobs``); the ingress forwards them as they are. An
engine that only generates text (the simulator) leaves ``data`` empty and the ingress formats
the text in OpenAI's shapes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Kind = Literal["chat", "completion"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, engine-neutral (the ingress builds it from an OpenAI request)."""

    request_id: str
    kind: Kind
    max_tokens: int
    messages: list[dict[str, Any]] = field(default_factory=list)  # kind == "chat"
    prompt: str = ""  # kind == "completion"
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    adapter: str | None = None  # a LoRA adapter of the model (vllm only)
    #: The client's other OpenAI parameters, as sent (checked against the engine's support
    #: by the ingress before the request gets here).
    params: dict[str, Any] = field(default_factory=dict)
    #: Whether the client streams: an engine that writes wire bytes writes SSE events when
    #: it does, and one JSON body (in the last chunk) when it does not.
    stream: bool = False
    #: Whether a streamed answer ends with a usage event (``stream_options.include_usage``).
    include_usage: bool = False
    #: The model name the answer carries (as the client addressed it) and its ``created``.
    model_name: str = ""
    created: int = 0
    #: OpenAI's ``parallel_tool_calls`` as sent (None: not sent). Only engines that make tool
    #: calls themselves read it (llama.cpp's xllamacpp runtime); it is not in ``params``.
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of generated text; the last chunk of a generation carries the finish reason
    and the token counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: The engine's own OpenAI wire bytes for this piece: SSE events when streaming, the
    #: whole JSON body in the last chunk when not; None where the ingress formats ``text``.
    data: bytes | None = None


@dataclass(frozen=True)
class EngineLoad:
    """Requests in the engine right now."""

    running: int
    waiting: int


class EngineError(Exception):
    """The engine failed to serve a request (the ingress tries another model)."""


class EngineOverloaded(EngineError):
    """The engine's queue is full (the ingress tries another model at once)."""


class RequestRejected(EngineError):
    """The request itself cannot be served by this model (a prompt longer than its context,
    a parameter it cannot honour): the client's error, not the model's. The ingress tries a
    model that can, or answers 400; the model is not marked unhealthy.

    ``code`` and ``param`` are OpenAI's (``context_length_exceeded``, ``messages``)."""

    def __init__(self, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message, code, param)
        self.message = message
        self.code = code
        self.param = param

    def __str__(self) -> str:
        return self.message


@runtime_checkable
class Engine(Protocol):
    """What a model deployment needs from an engine."""

    #: The model name the engine serves (as clients address it).
    model: str

    async def start(self) -> None:
        """Load weights and get ready; called once before any request."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream the generation of ``request``; the last chunk has ``finish_reason``."""

    async def check_health(self) -> None:
        """Raise when the engine cannot serve."""

    def load(self) -> EngineLoad:
        """Requests running and waiting now."""


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate of a text's token count (about four characters a token)."""
    return max(1, (len(text) + 3) // 4)


def render_messages(messages: list[dict[str, Any]]) -> str:
    """Chat messages as one plain-text prompt (for engines without a chat template)."""
    lines = [f"{m.get('role', 'user')}: {message_text(m)}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def message_text(message: dict[str, Any]) -> str:
    """The text of one chat message, whether ``content`` is a string or a list of parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
    )
