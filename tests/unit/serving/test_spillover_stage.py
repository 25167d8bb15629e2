"""The ingress's spillover stage in-process: a fitted cluster router, real simulated engines
behind the Endpoint, no Ray. A narrow first choice (two batch slots) queues under a burst;
spillover sends the excess to the next-best model within the allowed quality drop, counts it
per model pair, names it in the answer's headers, and keeps counting the first choice as the
router's decision (the autoscaler's demand)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from shoal.contract import AccessConfig, BuildArgs, key_digest
from shoal.routing import fit_router, write_artifact
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.types import Sample
from shoal.serving.clients import LocalModelClient, ModelInfo
from shoal.serving.engines.simulated import SimulatedEngine
from shoal.serving.ingress import Endpoint
from shoal.serving.metrics import RouterMetrics
from shoal.serving.spillover import SPILLED_HEADER, slots_per_replica, spill_policy

starlette = pytest.importorskip("starlette", reason="starlette (ray[serve]) not installed")
httpx = pytest.importorskip("httpx")

from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route  # noqa: E402

MATH = ["integral", "matrix", "prime", "algebra", "vector", "theorem"]
LAW = ["contract", "tort", "statute", "court", "plaintiff", "appeal"]
KEY = "sk-team-" + "a" * 40
PROMPT = "integral matrix prime"
ENGINES = {
    # two batch slots, 40 ms a step, 10 tokens: about 0.4 s a request
    "mathy": {"fixed_step_ms": 40, "output_tokens": 10, "max_batch": 2},
    "wordy": {"fixed_step_ms": 5, "output_tokens": 4, "max_batch": 64},
}


def artifact(path: Path) -> str:
    samples = []
    for i in range(12):
        for words, task in ((MATH, "math"), (LAW, "law")):
            prompt = f"{words[i % 6]} {words[(i + 1) % 6]} case {i}"
            # wordy is 0.1 below mathy in every cluster (whatever the hashing embedder groups).
            scores = {"mathy": 0.9, "wordy": 0.8}
            samples.append(Sample(prompt=prompt, scores=scores, task=task, origin=f"s:{i}"))
    blob = fit_router(samples, embedder=HashingEmbedder(64), clusters=2, top_p=1, alpha=1.0)
    write_artifact(path / "router.bin", blob)
    return str(path / "router.bin")


class WholeAnswerClient(LocalModelClient):
    """A client whose engine tells an unstreamed answer whole, in one chunk at its end (as
    vLLM's ``stream: false`` and llama.cpp's server do through Ray): its first token comes
    with its last."""

    answers_whole = True

    async def stream(self, request: Any, coalesce: bool) -> Any:
        chunks = [c async for c in super().stream(request, coalesce)]
        text = "".join(c.text for c in chunks)
        yield dataclasses.replace(chunks[-1], text=text)


def endpoint(
    tmp_path: Path, drop: str = "0.15", enabled: bool = True, client: type = LocalModelClient
) -> Endpoint:
    args = BuildArgs.parse(
        {
            "fleet_name": "test",
            "fleet": {
                "routingPolicyRef": {"name": "policy"},
                "tiers": [{"name": "small", "costPerReplicaHour": "0.36",
                           "slo": {"ttftP95Milliseconds": 150}}],
                "models": [{"name": n, "engine": "simulated", "tier": "small",
                            "engineArgs": ENGINES[n]} for n in ENGINES],
            },
            "policy": {
                "strategy": "cluster", "clusters": 2, "topP": 1, "alpha": "1",
                "calibration": {"configMapRef": {"name": "c", "key": "k"}},
                "spillover": {"enabled": enabled, "maxQualityDrop": drop},
            },
            "router_artifact_path": artifact(tmp_path),
        }
    )  # fmt: skip
    clients = {
        m.name: client(
            ModelInfo(m.name, m.tier, m.engine, 0.36),
            SimulatedEngine(m.name, m.engine_args, metrics=None),
        )
        for m in args.fleet.models
    }
    return Endpoint(args, clients, RouterMetrics("test", backend="prometheus"))  # type: ignore[arg-type]


def metric(ep: Endpoint, name: str, **labels: str) -> float:
    value = ep.metrics.registry.get_sample_value(name, {"fleet": "test", **labels})
    return 0.0 if value is None else float(value)


async def burst(ep: Endpoint, n: int, key: str | None = None) -> list[Any]:
    """One request to warm up (a service time measured), then ``n`` at once."""
    app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["GET", "POST"])])
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
        first = await c.post("/v1/chat/completions", json=body, headers=headers)
        assert first.status_code == 200 and first.headers["x-shoal-model"] == "mathy"
        assert SPILLED_HEADER not in first.headers
        many = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=body, headers=headers) for _ in range(n))
        )
        after = await c.post("/v1/chat/completions", json=body, headers=headers)
    return [first, *many, after]


def test_a_burst_spills_to_the_next_best_model_and_stops_when_it_drains(tmp_path: Path) -> None:
    ep = endpoint(tmp_path)
    responses = asyncio.run(burst(ep, 12))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    models = [r.headers["x-shoal-model"] for r in responses[1:-1]]
    spilled = [r for r in responses if SPILLED_HEADER in r.headers]
    # Two requests take mathy's two slots; the rest would wait past 150 ms behind them.
    assert models.count("mathy") >= 2 and models.count("wordy") >= 6, models
    assert all(r.headers[SPILLED_HEADER] == "mathy" for r in spilled)
    assert {r.headers["x-shoal-model"] for r in spilled} == {"wordy"}
    assert all(r.json()["model"] == "wordy" for r in spilled)
    # Once the burst has drained, mathy answers again.
    assert responses[-1].headers["x-shoal-model"] == "mathy"
    assert SPILLED_HEADER not in responses[-1].headers
    assert metric(ep, "shoal_spilled_requests_total", model="mathy", to="wordy") == len(spilled)
    # Every request was the router's decision for mathy: the autoscaler's demand.
    decisions = metric(ep, "shoal_routing_decisions_total", strategy="cluster", model="mathy",
                       cluster=responses[0].headers["x-shoal-cluster"])  # fmt: skip
    assert decisions == len(responses)
    assert ep.book.service_seconds["mathy"] > 0.15


def test_answers_told_whole_are_measured_and_spill_too(tmp_path: Path) -> None:
    """Unstreamed answers told whole have no time between their first token and their last:
    the request that found the model idle measures the slot's time end to end."""
    ep = endpoint(tmp_path, client=WholeAnswerClient)
    responses = asyncio.run(burst(ep, 12))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert ep.book.service_seconds["mathy"] > 0.15  # 10 steps of 40 ms, told at once
    models = [r.headers["x-shoal-model"] for r in responses[1:-1]]
    assert models.count("mathy") >= 2 and models.count("wordy") >= 6, models
    assert responses[-1].headers["x-shoal-model"] == "mathy"


def test_a_drop_beyond_the_allowance_keeps_the_first_choice(tmp_path: Path) -> None:
    ep = endpoint(tmp_path, drop="0.05")  # wordy is 0.1 below mathy on math
    responses = asyncio.run(burst(ep, 6))
    assert {r.headers["x-shoal-model"] for r in responses} == {"mathy"}
    assert metric(ep, "shoal_spilled_requests_total", model="mathy", to="wordy") == 0


def test_off_keeps_the_first_choice(tmp_path: Path) -> None:
    ep = endpoint(tmp_path, enabled=False)
    responses = asyncio.run(burst(ep, 6))
    assert {r.headers["x-shoal-model"] for r in responses} == {"mathy"}


def test_a_named_model_is_never_spilled(tmp_path: Path) -> None:
    ep = endpoint(tmp_path)
    ep.book.in_flight["mathy"] = 50  # a long queue, as the stage would see it
    ep.book.service_seconds["mathy"] = 1.0
    ranked = ep.spillover.route(["mathy"], {}, 0)
    assert ranked == ["mathy"]


def test_a_tenants_allowed_models_still_hold(tmp_path: Path) -> None:
    ep = endpoint(tmp_path)
    access = AccessConfig.model_validate(
        {"mode": "tenants",
         "tenants": [{"name": "team", "key_digests": [key_digest(KEY)], "models": ["mathy"]}]}
    )  # fmt: skip

    async def run() -> list[Any]:
        await ep.configure_access(access)
        try:
            return await burst(ep, 6, KEY)
        finally:
            if ep.usage_sync is not None:
                await ep.usage_sync.stop()

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert {r.headers["x-shoal-model"] for r in responses} == {"mathy"}
    assert metric(ep, "shoal_spilled_requests_total", model="mathy", to="wordy") == 0


def test_settings_from_the_policy_and_the_fleet(tmp_path: Path) -> None:
    ep = endpoint(tmp_path, drop="0.25")
    assert spill_policy(ep.args).enabled and spill_policy(ep.args).max_quality_drop == 0.25
    assert spill_policy(ep.args).slo_share == 1.0  # the objective itself, by default
    half = ep.args.policy.spillover.model_copy(update={"slo_share": "0.5"})  # type: ignore[union-attr]
    args = ep.args.model_copy(
        update={"policy": ep.args.policy.model_copy(update={"spillover": half})}
    )
    assert spill_policy(args).slo_share == 0.5
    # The spillover spec travels in the serve args the operator renders.
    args = BuildArgs.parse(ep.args.to_serve_args())
    assert args.policy.spillover is not None and args.policy.spillover.max_quality_drop == "0.25"
    tier = ep.args.fleet.tiers[0]
    assert slots_per_replica(ep.args.model("mathy"), tier) == 2  # the engine's batch
    # Without a batch argument: the tier's target, at most Ray Serve's max_ongoing_requests.
    bare = ep.args.model("mathy").model_copy(update={"engine_args": {}})
    assert slots_per_replica(bare, tier) == tier.autoscaling.target_ongoing_requests
    # Quality comes from the router's own table, per cluster.
    cluster = ep.ranker.rank(PROMPT).cluster
    assert cluster is not None
    quality = ep.spillover.quality_of(cluster) if ep.spillover.quality_of else None
    assert quality == pytest.approx({"mathy": 0.9, "wordy": 0.8})
