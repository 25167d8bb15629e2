"""Spillover for real: a burst on one model's topic spills to the other model while its queue
would break the objective, and stops once the queue has drained.

Two real llama.cpp engines (llama.cpp's own server, the project's tiny generated models, so
which model answered shows in the text) behind a real Ray Serve fleet, the cluster router
fitted on the tiny specialists' calibration data (math and chat only), the official path:
Ray Serve's proxy, the ingress deployment, deployment handles, Ray's metrics. ``math`` runs
one request at a time under a 100 ms objective; ``chat`` runs four under a 10 s objective
and is far worse at math in the router's tables, so spillover is allowed a drop of 0.9.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.contract import BuildArgs
from shoal.devtools.testing import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPECIALISTS = REPO_ROOT / "tests" / "integration" / "tiny_specialists.yaml"
REPLIES = {
    "math": "Math specialist: 6 times 7 is 42.",
    "chat": "Chat specialist: happy to talk, ask me anything!",
}
MATH_PROMPT = "What is 12 squared?"
BURST = 24


def _calibration() -> str:
    """The tiny specialists' calibration data without the code model and its prompts."""
    from shoal.local.manifests import load_fleet_file

    found = load_fleet_file(SPECIALISTS).calibration_data()
    assert found is not None
    lines = []
    for line in found[1].splitlines():
        if line.strip():
            row = json.loads(line)
            if row["task"] != "code":
                row["scores"].pop("code")
                lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def fleet_args(folder: Path) -> BuildArgs:
    from shoal.api.v1alpha1 import RoutingPolicySpec
    from shoal.routing import fit_policy_router, parse_calibration

    policy = RoutingPolicySpec.model_validate(
        {
            "strategy": "cluster", "embedder": {"type": "minilm"}, "clusters": 8, "topP": 3,
            "alpha": "0.7",
            "calibration": {"configMapRef": {"name": "calibration", "key": "calibration.jsonl"}},
            "spillover": {"enabled": True, "maxQualityDrop": "0.9"},
        }
    )  # fmt: skip
    samples = parse_calibration(_calibration().encode(), source="calibration", fmt="jsonl")
    (folder / "router.bin").write_bytes(fit_policy_router(policy, samples))

    def model(name: str, tier: str, slots: int) -> dict[str, Any]:
        return {
            "name": name, "tier": tier, "engine": "llamacpp", "minReplicas": 1, "maxReplicas": 1,
            "source": f"file://{folder}/{name}.gguf",
            "resources": {"cpu": "500m", "memory": "512Mi"},
            "engineArgs": {"runtime": "xllamacpp", "n_ctx": 512, "n_parallel": slots,
                           "max_waiting": 64,
                           "tiny_model": {"name": f"spill-{name}", "reply": REPLIES[name]}},
        }  # fmt: skip

    return BuildArgs.parse(
        {
            "fleet_name": "spill",
            "fleet": {
                "routingPolicyRef": {"name": "spill"},
                "tiers": [
                    {"name": "fast", "costPerReplicaHour": "0.05",
                     "slo": {"ttftP95Milliseconds": 100},
                     "autoscaling": {"targetOngoingRequests": 1}},
                    {"name": "roomy", "costPerReplicaHour": "0.05",
                     "slo": {"ttftP95Milliseconds": 10000},
                     "autoscaling": {"targetOngoingRequests": 4}},
                ],
                "models": [model("math", "fast", 1), model("chat", "roomy", 4)],
            },
            "policy": policy.model_dump(by_alias=True, exclude_none=True),
            "router_artifact_path": str(folder / "router.bin"),
            "model_paths": {n: str(folder / f"{n}.gguf") for n in REPLIES},
            "limits": {"max_body_bytes": 65536, "max_tokens": 64},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ray import serve

    from shoal.serving.app import build_app

    args = fleet_args(tmp_path_factory.mktemp("spill"))
    serve.run(build_app(args), name="spill", route_prefix="/")
    yield local_ray
    serve.delete("spill")


def _ask(base_url: str, model: str = "auto") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": MATH_PROMPT}]}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)


async def _burst(base_url: str, n: int) -> list[httpx.Response]:
    body = {"model": "auto", "messages": [{"role": "user", "content": MATH_PROMPT}]}
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as c:
        return list(await asyncio.gather(*(c.post("/v1/chat/completions", json=body)
                                           for _ in range(n))))  # fmt: skip


def test_a_burst_spills_while_the_queue_would_break_the_objective(fleet: Any) -> None:
    # Quiet: math answers its own topic (and the ingress measures its time per request).
    for _ in range(3):
        quiet = _ask(fleet.base_url)
        assert quiet.status_code == 200, quiet.text
        assert quiet.headers["x-shoal-model"] == "math"
        assert quiet.json()["choices"][0]["message"]["content"] == REPLIES["math"]
        assert "x-shoal-spilled-from" not in quiet.headers
    # chat has traffic of its own too (one request naming it): the ingress has measured its
    # time per request. A taker with no measured time takes spilled requests only while it
    # has free slots (four here): beyond them its wait has no evidence to estimate from.
    named = _ask(fleet.base_url, "chat")
    assert named.status_code == 200 and named.headers["x-shoal-model"] == "chat", named.text
    before = fleet.metric("ray_shoal_spilled_requests_total", model="math", to="chat")

    # A burst on math's topic: one slot, a queue that would keep most past 100 ms.
    answers = asyncio.run(_burst(fleet.base_url, BURST))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers][:3]
    models = [r.headers["x-shoal-model"] for r in answers]
    spilled = [r for r in answers if "x-shoal-spilled-from" in r.headers]
    assert models.count("math") >= 1 and len(spilled) >= BURST // 3, models
    for r in spilled:
        assert r.headers["x-shoal-spilled-from"] == "math"
        assert r.headers["x-shoal-model"] == "chat"
        assert r.json()["choices"][0]["message"]["content"] == REPLIES["chat"]
    # Spilled requests were not fallbacks: chat took them while math could have.
    assert all(r.headers["x-shoal-model"] == "math" for r in answers
               if "x-shoal-spilled-from" not in r.headers)  # fmt: skip

    # Drained: math answers again, nothing spills.
    deadline = time.monotonic() + 30
    while True:
        after = _ask(fleet.base_url)
        if after.headers["x-shoal-model"] == "math" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert after.headers["x-shoal-model"] == "math"
    assert "x-shoal-spilled-from" not in after.headers

    # The metric counts every spill, per model pair (Ray exports it within seconds).
    counted = fleet.wait_metric(
        "ray_shoal_spilled_requests_total",
        lambda v: v - before >= len(spilled),
        model="math",
        to="chat",
    )
    assert counted - before == len(spilled)
    # Every request remained the router's decision for math: the autoscaler's demand.
    decided = fleet.wait_metric(
        "ray_shoal_routing_decisions_total", lambda v: v >= 3 + BURST + 1, model="math"
    )
    assert decided >= 3 + BURST + 1
