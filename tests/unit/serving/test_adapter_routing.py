"""A LoRA adapter as a model of its own in the ingress (``<model>:<adapter>``): named by a
client, ranked by the router, listed, kept to a tenant's models, with the adapter set on the
request its base model's client gets.

The base model is a vLLM model in the fleet; here a recording stand-in (a fake) serves it
with the simulator, since only the ingress is under test. The real path, vLLM's CPU build
loading the adapter from a local S3 server through the fleet: tests/integration/serving/
test_vllm_lora.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.contract import BuildArgs
from shoal.serving.clients import LocalModelClient, ModelInfo
from shoal.serving.engines.base import Chunk, GenerationRequest
from shoal.serving.engines.simulated import SimulatedEngine
from shoal.serving.ingress import Endpoint
from shoal.serving.metrics import RouterMetrics

pytest.importorskip("starlette", reason="starlette (ray[serve]) not installed")
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient


class FakeVllmClient(LocalModelClient):
    """The simulator in a vLLM model's place (a fake), recording each request's adapter."""

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info, SimulatedEngine(info.name, {"output_tokens": 3}, metrics=None))
        self.adapters: list[str | None] = []

    async def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        self.adapters.append(request.adapter)
        async for chunk in super().stream(request, coalesce):
            yield chunk


def endpoint(order: list[str]) -> tuple[Endpoint, FakeVllmClient]:
    args = BuildArgs.parse(
        {
            "fleet_name": "test",
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "cpu", "costPerReplicaHour": "0.50"}],
                "models": [
                    {"name": "tiny", "tier": "cpu", "source": "hf://org/tiny",
                     "loraAdapters": [{"name": "legal"}],
                     "loraStore": {"uri": "s3://adapters/tiny"}},
                    {"name": "sim", "engine": "simulated", "tier": "cpu"},
                ],
            },
            "policy": {"strategy": "static", "staticOrder": order},
        }
    )  # fmt: skip
    tiny = FakeVllmClient(ModelInfo("tiny", "cpu", "vllm", 0.5))
    sim = LocalModelClient(
        ModelInfo("sim", "cpu", "simulated", 0.5),
        SimulatedEngine("sim", {"output_tokens": 3}, metrics=None),
    )
    clients: dict[str, Any] = {"tiny": tiny, "sim": sim}
    return Endpoint(args, clients, RouterMetrics("test", backend="prometheus")), tiny


def client(ep: Endpoint) -> TestClient:
    app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["GET", "POST"])])
    return TestClient(app)


def ask(tc: TestClient, model: str) -> Any:
    return tc.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 3})


def test_a_named_adapter_reaches_its_base_model_with_the_adapter_set() -> None:
    ep, tiny = endpoint(["sim", "tiny"])
    with client(ep) as tc:
        res = ask(tc, "tiny:legal")
        assert res.status_code == 200, res.text
        assert res.headers["x-shoal-model"] == "tiny:legal"
        assert res.json()["model"] == "tiny:legal"
        assert ask(tc, "tiny").headers["x-shoal-model"] == "tiny"
        assert ask(tc, "tiny:nope").status_code == 404
    assert tiny.adapters == ["legal", None]


def test_the_router_ranks_an_adapter_like_a_model() -> None:
    ep, tiny = endpoint(["tiny:legal", "sim"])
    with client(ep) as tc:
        res = ask(tc, "auto")
        assert res.status_code == 200, res.text
        assert res.headers["x-shoal-model"] == "tiny:legal"
        assert tiny.adapters == ["legal"]
        models = {m["id"]: m.get("shoal", {}) for m in tc.get("/v1/models").json()["data"]}
        assert models["tiny:legal"]["adapter_of"] == "tiny"
        assert list(models) == ["auto", "tiny", "sim", "tiny:legal"]
    value = ep.metrics.registry.get_sample_value(
        "shoal_requests_total",
        {"fleet": "test", "model": "tiny:legal", "tier": "cpu", "api": "completion",
         "code": "200"},
    )  # fmt: skip
    assert value == 1.0
