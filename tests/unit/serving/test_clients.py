"""ServeModelClient's handling of its Ray Serve call, over a fake handle.

The real path (a Ray Serve handle over gRPC) runs in tests/integration/serving; these tests
pin down when the client cancels the call, which the integration tests cannot observe.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.serving.clients import ModelFailed, ModelInfo, ServeModelClient
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
