"""HTTP plumbing shared by the ingress and the model deployments (Starlette objects).

Reading a body under a size limit, parsing it into an OpenAI request, and turning engine
chunks into a JSON body or an SSE stream (``data: ...`` events ending with
``data: [DONE]``), with a deadline on the downstream generation and a callback when the
answer is complete, so the caller can record metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shoal.contract import ServingLimits
from shoal.serving.engines.base import Chunk, GenerationRequest
from shoal.serving.openai_api import (
    SSE_DONE,
    ApiError,
    ChatRequest,
    CompletionRequest,
    StreamFormatter,
    chat_body,
    completion_body,
    parse_chat,
    parse_completion,
    to_generation,
)

Api = Literal["chat", "completion"]
OnFinish = Callable[[Chunk | None, BaseException | None], None]

__all__ = ["Api", "ApiError"]

log = logging.getLogger("shoal.serving.http")


def api_of(path: str) -> Api | None:
    """Which generation API a request path addresses."""
    if path.endswith("/v1/chat/completions"):
        return "chat"
    if path.endswith("/v1/completions"):
        return "completion"
    return None


def not_found(path: str) -> ApiError:
    return ApiError(404, f"Unknown request URL: {path}.", code="unknown_url")


def method_not_allowed(path: str, allow: str) -> ApiError:
    """405 with the ``Allow`` header HTTP requires."""
    return ApiError(
        405, f"Use {allow} for {path}.", code="method_not_allowed", headers={"allow": allow}
    )


#: Seconds a client has to send its whole request body (a slow sender holds a connection and
#: a slot of the ingress while it trickles; 408 after this).
BODY_READ_SECONDS = 30.0


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The body, or 413 when it is larger than ``limit`` bytes (checked before reading when
    the client declares its length), or 408 when it has not arrived within ``timeout``
    seconds (default :data:`BODY_READ_SECONDS`)."""
    timeout = BODY_READ_SECONDS if timeout is None else timeout
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"Request body too large: the limit is {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise ApiError(413, f"Request body too large: the limit is {limit} bytes.")
                chunks.append(part)
    except TimeoutError:
        raise ApiError(
            408, f"The request body did not arrive within {timeout:g} s.", code="timeout"
        ) from None
    return b"".join(chunks)


def parse(api: Api, body: bytes, limits: ServingLimits) -> ChatRequest | CompletionRequest:
    if api == "chat":
        return parse_chat(body, max_tokens_limit=limits.max_tokens)
    return parse_completion(body, max_tokens_limit=limits.max_tokens)


def generation(
    parsed: ChatRequest | CompletionRequest,
    request_id: str,
    limits: ServingLimits,
    model_name: str = "",
) -> GenerationRequest:
    """The engine's request: what Shoal read, the client's other parameters, and the name
    and ``created`` the answer carries."""
    return to_generation(
        parsed, request_id, limits.default_max_tokens, model_name or parsed.model, int(time.time())
    )


def new_id(api: Api) -> str:
    return ("chatcmpl-" if api == "chat" else "cmpl-") + uuid.uuid4().hex


def json_response(
    data: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(data, separators=(",", ":")).encode(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> Response:
    return json_response(err.body(), err.status, {**(headers or {}), **err.headers})


def models_body(models: list[str], created: int = 0) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "shoal"} for m in models
        ],
    }


async def collect(first: Chunk, rest: AsyncIterator[Chunk], deadline: float) -> tuple[str, Chunk]:
    """Concatenate a generation; the last chunk carries finish reason and counts. Raises
    TimeoutError past ``deadline`` (a ``time.monotonic`` value)."""
    parts = [first.text]
    last = first
    if first.finish_reason is None:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            async for chunk in rest:
                parts.append(chunk.text)
                last = chunk
                if chunk.finish_reason is not None:
                    break
    if last.finish_reason is None:
        raise ApiError(
            502, "The model ended its answer without a finish reason.", type="server_error"
        )
    return "".join(parts), last


def completion_response(
    api: Api, rid: str, model: str, text: str, last: Chunk, headers: dict[str, str]
) -> Response:
    """The unary answer: the engine's own body where it wrote one, else ``text`` formatted."""
    if last.data is not None:
        return Response(last.data, headers=headers, media_type="application/json")
    build = chat_body if api == "chat" else completion_body
    body = build(
        rid,
        int(time.time()),
        model,
        text,
        last.finish_reason or "stop",
        last.prompt_tokens or 0,
        last.completion_tokens or 0,
    )
    return json_response(body, headers=headers)


def sse_response(
    api: Api,
    rid: str,
    model: str,
    include_usage: bool,
    first: Chunk,
    rest: AsyncIterator[Chunk],
    headers: dict[str, str],
    deadline: float,
    on_finish: OnFinish | None = None,
) -> StreamingResponse:
    """Stream ``first`` and ``rest`` as OpenAI SSE events, then ``data: [DONE]``."""
    fmt = StreamFormatter(api, rid, int(time.time()), model, include_usage)
    started = False

    async def events() -> AsyncIterator[bytes]:
        nonlocal started
        started = True
        last: Chunk | None = first
        error: BaseException | None = None
        try:
            yield fmt.chunk(first)
            if first.finish_reason is None:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    async for chunk in rest:
                        last = chunk
                        yield fmt.chunk(chunk)
                        if chunk.finish_reason is not None:
                            break
            if last is None or last.finish_reason is None:
                raise ApiError(502, "The model ended its answer early.", type="server_error")
        except BaseException as exc:
            error = exc
            if not isinstance(exc, Exception):
                raise  # the client went away (cancelled, or the response closed us)
            log.warning("stream %s from %s broke: %s", rid, model, type(exc).__name__)
            err = (
                exc
                if isinstance(exc, ApiError)
                else ApiError(
                    502, f"The model {model} failed while streaming.", type="server_error"
                )
            )
            yield fmt.error(err)
        finally:
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):  # closing a broken downstream
                    await aclose()
            if on_finish is not None:
                on_finish(last if error is None else None, error)
        yield SSE_DONE

    async def never_sent() -> None:
        # The client went away before the first event was written (the body never started):
        # the downstream call is cancelled and the stream's end still told.
        if not started:
            aclose = getattr(rest, "aclose", None)
            if on_finish is not None:
                on_finish(None, asyncio.CancelledError())
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    return _SseResponse(
        events(),
        never_sent,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", **headers},
    )


class _SseResponse(StreamingResponse):
    """A streaming response that tells ``unsent`` when it ends without ever starting its
    body (cancelled while sending the headers, or never sent at all)."""

    def __init__(
        self, content: AsyncIterator[bytes], unsent: Callable[[], Awaitable[None]], **kw: Any
    ) -> None:
        super().__init__(content, **kw)
        self._unsent = unsent

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._unsent()
            # A body left suspended (the client went away while an event was being sent) is
            # closed now rather than whenever it is collected: its end is told at once.
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


async def respond(
    api: Api,
    parsed: ChatRequest | CompletionRequest,
    model: str,
    first: Chunk,
    rest: AsyncIterator[Chunk],
    headers: dict[str, str],
    timeout: float,
) -> Response:
    """The whole answer of one model to one request, streamed or not."""
    rid = new_id(api)
    deadline = time.monotonic() + timeout
    if parsed.streaming:
        return sse_response(api, rid, model, parsed.include_usage, first, rest, headers, deadline)
    text, last = await collect(first, rest, deadline)
    return completion_response(api, rid, model, text, last, headers)
