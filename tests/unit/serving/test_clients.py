"""The model clients' handling of their Ray Serve calls, over fake handles.

The real path (a Ray Serve handle over gRPC, Ray Serve LLM's server over vLLM) runs in
tests/integration/serving; these tests pin down when a client cancels its call, which the
integration tests cannot observe, and what an unstreamed request asks of vLLM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from shoal.serving.clients import (
    LLMServerClient,
    ModelFailed,
    ModelInfo,
    ModelRejected,
    ServeModelClient,
)
from shoal.serving.engines.base import Chunk, GenerationRequest

INFO = ModelInfo(name="m", tier="t", engine="simulated", cost_per_replica_hour=1.0)
REQUEST = GenerationRequest(request_id="r", kind="completion", max_tokens=3, prompt="hi")


class FakeResponse:
    """Stands in for a DeploymentResponseGenerator: yields chunks, records cancel()."""

    def __init__(self, chunks: list[Chunk], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Chunk]:
        for i, chunk in enumerate(self.chunks):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("replica died")
            yield chunk

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """Stands in for a DeploymentHandle: records the options, returns FakeResponses."""

    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.options_seen: list[dict[str, Any]] = []

    def options(self, **kwargs: Any) -> FakeHandle:
        self.options_seen.append(kwargs)
        return self

    def remote(self, *args: Any) -> FakeResponse:
        return self.response


CHUNKS = [Chunk("a"), Chunk("b"), Chunk("c", "stop", 1, 3)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_stream_closed_at_its_last_chunk_is_not_cancelled() -> None:
    """The ingress stops reading at the chunk that carries finish_reason and closes the
    stream: the call is over, so no cancel goes to the replica."""
    response = FakeResponse(CHUNKS)
    client = ServeModelClient(INFO, FakeHandle(response))

    async def read() -> list[str]:
        got = []
        stream = client.stream(REQUEST, coalesce=False)
        async for chunk in stream:
            got.append(chunk.text)
            if chunk.finish_reason is not None:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        return got

    assert run(read()) == ["a", "b", "c"]
    assert not response.cancelled


def test_a_stream_abandoned_early_is_cancelled() -> None:
    response = FakeResponse(CHUNKS)
    client = ServeModelClient(INFO, FakeHandle(response))

    async def read_one() -> str:
        stream = client.stream(REQUEST, coalesce=False)
        first = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        return first.text

    assert run(read_one()) == "a"
    assert response.cancelled


def test_a_failing_call_raises_model_failed_and_is_not_cancelled() -> None:
    response = FakeResponse(CHUNKS, fail_after=1)
    client = ServeModelClient(INFO, FakeHandle(response))

    async def read_all() -> None:
        async for _ in client.stream(REQUEST, coalesce=False):
            pass

    with pytest.raises(ModelFailed, match="replica died"):
        run(read_all())
    assert not response.cancelled


def test_calls_go_over_grpc_with_plain_pickle() -> None:
    handle = FakeHandle(FakeResponse(CHUNKS))
    ServeModelClient(INFO, handle)
    for opts in handle.options_seen:
        assert opts["_by_reference"] is False
        assert opts["request_serialization"] == opts["response_serialization"] == "pickle"


# --- LLMServerClient (Ray Serve LLM's server) over a fake handle -----------------------------


class FakeLLMServer(FakeHandle):
    """Stands in for an ``LLMServer`` handle: records the request bodies it is sent."""

    def __init__(self, response: FakeResponse) -> None:
        super().__init__(response)
        self.bodies: list[dict[str, Any]] = []


class BodyClient(LLMServerClient):
    """The client with the request object replaced by its plain body (Ray Serve LLM's
    request classes need vLLM, which unit tests go without); the body is what vLLM gets."""

    def _request(self, request: GenerationRequest) -> Any:
        body = self.body(request)
        self._chat.bodies.append(body)  # the fake handle: its options() return itself
        return body


def llm_client(response: FakeResponse) -> tuple[BodyClient, FakeLLMServer]:
    handle = FakeLLMServer(response)
    return BodyClient(VLLM_INFO, handle, "tiny"), handle


VLLM_INFO = ModelInfo(name="tiny", tier="t", engine="vllm", cost_per_replica_hour=1.0)


def sse(data: dict[str, Any]) -> str:
    return "data: " + json.dumps(data, separators=(",", ":")) + "\n\n"


def events() -> list[Any]:
    """vLLM's streamed chat as Ray Serve LLM batches it: lists of SSE strings."""
    delta = {"id": "vllm-1", "object": "chat.completion.chunk", "model": "tiny"}
    return [
        [sse({**delta, "choices": [{"index": 0, "delta": {"content": "Hi"}}]})],
        [
            sse({**delta, "choices": [{"index": 0, "delta": {"content": "!"}}]}),
            sse({**delta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            sse({**delta, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
        ],
        ["data: [DONE]\n\n"],
    ]


STREAMED = dataclasses.replace(
    REQUEST, kind="chat", messages=[{"role": "user", "content": "hi"}], stream=True,
    request_id="chatcmpl-shoal",
)  # fmt: skip
UNARY = dataclasses.replace(STREAMED, stream=False)


async def read_to_finish(stream: Any) -> list[Chunk]:
    """Read as the ingress does: up to the chunk with the finish reason, then close."""
    got = []
    async for chunk in stream:
        got.append(chunk)
        if chunk.finish_reason is not None:
            break
    await stream.aclose()
    return got


def test_a_finished_llm_server_stream_is_not_cancelled() -> None:
    client, handle = llm_client(FakeResponse(events()))  # type: ignore[arg-type]
    got = run(read_to_finish(client.stream(STREAMED, coalesce=False)))
    assert got[-1].finish_reason == "stop" and got[-1].completion_tokens == 2
    assert b'"id":"chatcmpl-shoal"' in b"".join(c.data or b"" for c in got)
    assert handle.bodies[0]["stream"] is True
    assert not handle.response.cancelled


def test_an_abandoned_llm_server_stream_is_cancelled() -> None:
    client, handle = llm_client(FakeResponse(events()))  # type: ignore[arg-type]

    async def read_one() -> None:
        stream = client.stream(STREAMED, coalesce=False)
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]

    run(read_one())
    assert handle.response.cancelled


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Message(BaseModel):
    role: str
    content: str | None


class Choice(BaseModel):
    index: int
    message: Message
    finish_reason: str | None


class ChatResponse(BaseModel):
    """vLLM's ChatCompletionResponse, the fields the client reads."""

    id: str
    object: str = "chat.completion"
    created: int = 0
    model: str
    choices: list[Choice]
    usage: Usage


def test_an_unstreamed_request_goes_to_vllm_unstreamed_and_is_not_cancelled() -> None:
    answer = ChatResponse(
        id="chatcmpl-vllm",
        model="tiny",
        choices=[Choice(index=0, message=Message(role="assistant", content="Hi!"),
                        finish_reason="length")],
        usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7),
    )  # fmt: skip
    client, handle = llm_client(FakeResponse([answer]))  # type: ignore[list-item]
    got = run(read_to_finish(client.stream(UNARY, coalesce=True)))
    assert handle.bodies == [
        {"model": "tiny", "max_tokens": 3, "stream": False}
    ]  # no stream_options: vLLM answers once
    (chunk,) = got
    assert (chunk.text, chunk.finish_reason) == ("Hi!", "length")
    assert (chunk.prompt_tokens, chunk.completion_tokens) == (5, 2)
    body = json.loads(chunk.data or b"")
    assert body["id"] == "chatcmpl-shoal"  # Shoal's signed id, not vLLM's
    assert body["choices"][0]["message"]["content"] == "Hi!"
    assert not handle.response.cancelled


def test_an_unstreamed_error_answer_is_the_model_refusing() -> None:
    class ErrorResponse(BaseModel):
        error: dict[str, Any]

    refusal = ErrorResponse(
        error={"message": "maximum context length is 256", "type": "BadRequestError", "code": 400}
    )
    client, handle = llm_client(FakeResponse([refusal]))  # type: ignore[list-item]
    with pytest.raises(ModelRejected, match="context length"):
        run(read_to_finish(client.stream(UNARY, coalesce=True)))
    assert not handle.response.cancelled
