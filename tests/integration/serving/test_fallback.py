"""Fallback for real: Ray Serve back-pressure and a replica killed under concurrent load.

Simulated engines (the load simulator) stand in for GPUs; everything else is the real path:
Ray Serve proxy, the ingress deployment, deployment handles, model replicas, Ray metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shoal.contract import BuildArgs, model_deployment_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64}


def fleet_args() -> BuildArgs:
    one = {"minReplicas": 1, "maxReplicas": 1}
    return BuildArgs.parse(
        {
            "fleet_name": "fallback",
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [
                    # target 2 -> max_ongoing_requests 4 and max_queued_requests 16 per handle
                    {"name": "small", "costPerReplicaHour": "0.50",
                     "autoscaling": {"targetOngoingRequests": 2}},
                    {"name": "large", "costPerReplicaHour": "2.00",
                     "autoscaling": {"targetOngoingRequests": 64}},
                ],
                "models": [
                    {"name": "primary", "engine": "simulated", "tier": "small", **one,
                     "engineArgs": {"fixed_step_ms": 25, "output_tokens": 12}},
                    {"name": "backup", "engine": "simulated", "tier": "large", **one,
                     "engineArgs": {"fixed_step_ms": 25, "output_tokens": 12}},
                ],
            },
            "policy": {"strategy": "static", "staticOrder": ["primary", "backup"]},
            "limits": {"first_token_timeout_seconds": 5, "unhealthy_cooldown_seconds": 3},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(local_ray: Any) -> Iterator[Any]:
    from ray import serve

    from shoal.serving.app import build_app

    serve.run(build_app(fleet_args()), name="fallback", route_prefix="/")
    yield local_ray
    serve.delete("fallback")


async def _load(base_url: str, clients: int, seconds: float, on_tick: Any = None) -> list[Any]:
    """``clients`` concurrent callers, each sending requests back to back for ``seconds``."""
    results: list[Any] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:

        async def caller() -> None:
            while time.monotonic() < deadline:
                try:
                    r = await http.post("/v1/chat/completions", json=BODY)
                    results.append((r.status_code, r.headers.get("x-shoal-model"), r.text[:200]))
                except httpx.HTTPError as exc:
                    results.append((0, None, repr(exc)))

        tasks = [asyncio.create_task(caller()) for _ in range(clients)]
        if on_tick is not None:
            await on_tick(results)
        await asyncio.gather(*tasks)
    return results


def test_back_pressure_moves_requests_down_the_list(fleet: Any) -> None:
    before = fleet.metric("ray_shoal_fallbacks_total", model="primary", reason="overload")
    # 48 concurrent callers against primary's 4 running + 16 queued: the rest is refused by
    # Ray Serve at once (BackPressureError) and answered by backup.
    results = asyncio.run(_load(fleet.base_url, clients=48, seconds=4))
    assert results and all(code == 200 for code, _, _ in results), results[:3]
    models = [m for _, m, _ in results]
    assert models.count("primary") > 0 and models.count("backup") > 0
    after = fleet.wait_metric(
        "ray_shoal_fallbacks_total", lambda v: v > before, model="primary", reason="overload"
    )
    assert after - before >= models.count("backup") * 0.9  # the last export may lag a little


def _replica_actor_names(deployment: str) -> list[str]:
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    return [
        n["name"] for n in names
        if n["namespace"] == "serve" and f"#{deployment}#" in n["name"]
    ]  # fmt: skip


def test_killing_a_replica_under_load_fails_no_request(fleet: Any) -> None:
    import ray

    before = fleet.metric("ray_shoal_fallbacks_total", model="primary")
    victims = _replica_actor_names(model_deployment_name("primary"))
    assert len(victims) == 1, victims

    async def kill_once_primary_answers(results: list[Any]) -> None:
        # Kill once primary has answered under this load (not after a fixed time: on a busy
        # machine the previous test's load may still be draining), then a little later.
        deadline = time.monotonic() + 30
        while not any(m == "primary" for _, m, _ in results) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)

    # 12 callers stay below primary's back-pressure limit: before the kill, primary answers.
    results = asyncio.run(
        _load(fleet.base_url, clients=12, seconds=8, on_tick=kill_once_primary_answers)
    )
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    models = [m for _, m, _ in results]
    assert models.count("primary") > 0 and models.count("backup") > 0
    after = fleet.wait_metric("ray_shoal_fallbacks_total", lambda v: v > before, model="primary")
    assert after > before
    # The dead replica shows as a failed call ("error") or, where Ray's handle still waits on
    # it, as no first token in time ("timeout"); which one depends on timing.
    by_reason = {
        r: fleet.metric("ray_shoal_fallbacks_total", model="primary", reason=r)
        for r in ("error", "timeout", "overload", "unhealthy")
    }
    assert by_reason["error"] + by_reason["timeout"] >= 1, by_reason
    # Ray Serve replaces the replica; after the cooldown primary answers again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.post(f"{fleet.base_url}/v1/chat/completions", json=BODY, timeout=30)
        assert r.status_code == 200
        if r.headers["x-shoal-model"] == "primary":
            break
        time.sleep(1)
    else:
        pytest.fail("primary never came back after its replica was replaced")
