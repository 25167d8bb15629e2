"""The fleet's only ingress replica killed under load, on real Ray Serve: requests that were
not accepted yet (refused connections, the proxy's 503 while no ingress replica is up) are
retried by the callers and served once Ray Serve has replaced the replica; the requests in
flight at the kill are counted and reported, and bounded by the callers' concurrency."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shoal.contract import INGRESS_DEPLOYMENT, BuildArgs
from tests.integration.serving.conftest import local_ray  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}
CLIENTS = 8


def _args() -> BuildArgs:
    return BuildArgs.parse({
        "fleet_name": "ingress-fault",
        "fleet": {
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.50"}],
            "models": [{"name": "m", "engine": "simulated", "tier": "small",
                        "minReplicas": 1, "maxReplicas": 1,
                        "engineArgs": {"fixed_step_ms": 20, "output_tokens": 8}}],
        },
        "policy": {"strategy": "static", "staticOrder": ["m"]},
    })  # fmt: skip


@pytest.fixture()
def fleet(local_ray: Any) -> Iterator[Any]:  # noqa: F811
    from ray import serve

    from shoal.serving.app import build_app

    serve.run(build_app(_args()), name="ingress-fault", route_prefix="/")
    yield local_ray
    serve.delete("ingress-fault")


def _ingress_actors() -> list[str]:
    import ray

    return [n["name"] for n in ray.util.list_named_actors(all_namespaces=True)
            if n["namespace"] == "serve" and f"#{INGRESS_DEPLOYMENT}#" in n["name"]]  # fmt: skip


class Outcomes:
    """Per request: served (after how many not-accepted tries) or lost in flight."""

    def __init__(self) -> None:
        self.served = 0
        self.served_after_retry = 0
        self.refused_tries: Counter[str] = Counter()
        self.in_flight_lost: list[str] = []
        #: When the replica was killed (time.monotonic); a request sent after it cannot have
        #: been in flight at the kill.
        self.killed_at: float | None = None


async def _caller(http: httpx.AsyncClient, out: Outcomes, stop: asyncio.Event) -> None:
    while not stop.is_set():
        retried = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                r = await http.post("/v1/chat/completions", json=BODY)
            except httpx.ConnectError as exc:  # not accepted: nobody listening
                out.refused_tries[type(exc).__name__] += 1
            except httpx.HTTPError as exc:
                if out.killed_at is not None and sent > out.killed_at:
                    # Sent while no ingress replica was up: the front end dropped it without
                    # an ingress ever accepting it, so it is retried like a refused one.
                    out.refused_tries[type(exc).__name__] += 1
                else:  # accepted, then lost: in flight at the kill
                    out.in_flight_lost.append(repr(exc)[:120])
                    break
            else:
                if r.status_code == 200:
                    out.served += 1
                    out.served_after_retry += retried
                    break
                if r.status_code in (502, 503):  # the proxy had no ingress replica to give it to
                    out.refused_tries[str(r.status_code)] += 1
                else:  # the ingress took it and failed it
                    out.in_flight_lost.append(f"{r.status_code} {r.text[:100]}")
                    break
            retried = True
            await asyncio.sleep(0.2)
        else:
            pytest.fail("a request was never served after the ingress came back")


def test_ingress_killed_under_load(fleet: Any) -> None:
    import ray

    (victim,) = _ingress_actors()
    out = Outcomes()

    async def run() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=fleet.base_url, timeout=60) as http:
            callers = [asyncio.create_task(_caller(http, out, stop)) for _ in range(CLIENTS)]
            while out.served < 20:  # under load, answered, before the kill
                await asyncio.sleep(0.05)
            served_before = out.served
            out.killed_at = time.monotonic()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            # Load goes on until a new ingress replica has answered plenty.
            while not (set(_ingress_actors()) - {victim}) or out.served < served_before + 40:
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*callers)

    asyncio.run(run())
    print(f"\ningress killed under {CLIENTS} callers: served {out.served}, "
          f"{out.served_after_retry} of them after not-accepted tries "
          f"({dict(out.refused_tries)}), lost in flight {len(out.in_flight_lost)}: "
          f"{out.in_flight_lost[:3]}")  # fmt: skip
    replacement = set(_ingress_actors()) - {victim}
    assert len(replacement) == 1, "Ray Serve did not replace the ingress replica"
    # At most one request per caller can have been in flight when the replica died.
    assert len(out.in_flight_lost) <= CLIENTS, out.in_flight_lost
    assert out.served >= 60
