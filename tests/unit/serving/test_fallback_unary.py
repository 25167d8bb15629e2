"""A model that answers an unstreamed request whole (vLLM asked with ``stream: false``): its
first chunk is the whole answer, so the first-token timeout does not cut it off; the request's
own timeout does. In process, over the simulator (the real vLLM path: test_vllm_cpu.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from serving_fleets import sim_args

from shoal.contract import BuildArgs
from shoal.serving.clients import LocalModelClient, ModelInfo
from shoal.serving.engines.base import Chunk, GenerationRequest
from shoal.serving.engines.simulated import SimulatedEngine
from shoal.serving.ingress import Endpoint
from shoal.serving.metrics import RouterMetrics

pytest.importorskip("starlette", reason="starlette (ray[serve]) not installed")

from starlette.testclient import TestClient


class FakeWholeAnswerClient(LocalModelClient):
    """Stands in for ``LLMServerClient`` asking vLLM unstreamed: one chunk, the whole answer,
    after the whole generation."""

    answers_whole = True

    async def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        parts = [c async for c in self.engine.generate(request)]
        last = parts[-1]
        yield Chunk("".join(p.text for p in parts), last.finish_reason, last.prompt_tokens,
                    last.completion_tokens)  # fmt: skip


def endpoint(request_timeout: float) -> Endpoint:
    raw = sim_args(["whole"])
    # Five steps of 100 ms: the answer takes half a second, five first-token timeouts.
    raw["fleet"]["models"][0]["engineArgs"] = {"fixed_step_ms": 100, "output_tokens": 5}
    raw["limits"] = {"first_token_timeout_seconds": 0.1, "request_timeout_seconds": request_timeout}
    args = BuildArgs.parse(raw)
    model = args.fleet.models[0]
    client = FakeWholeAnswerClient(
        ModelInfo(model.name, model.tier, model.engine, 1.0),
        SimulatedEngine(model.name, model.engine_args, metrics=None),
    )
    return Endpoint(args, {model.name: client}, RouterMetrics("test", backend="prometheus"))


def post(ep: Endpoint, stream: bool = False) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["POST"])])
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with TestClient(app) as tc:
        return tc.post("/v1/chat/completions", json=body)


def test_an_unstreamed_answer_longer_than_the_first_token_timeout_is_served() -> None:
    ep = endpoint(request_timeout=30)
    r = post(ep)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 5
    assert ep.in_flight["whole"] == 0


def test_the_request_timeout_still_bounds_it() -> None:
    ep = endpoint(request_timeout=0.2)
    r = post(ep)
    assert r.status_code == 503
    assert "timeout" in r.json()["error"]["message"]
    assert ep.in_flight["whole"] == 0
