"""Clients that go away, for real: the ingress's books read back from Ray's metrics.

A fleet with one slow simulated model (a token every 2 s) and one tenant, in a local Ray
behind Ray Serve's proxy. A real HTTP client leaves before the first token, during an
unstreamed answer and mid-stream; Ray Serve cancels the ingress's request each time. After
each, the model's in-flight gauge (the autoscaler's input) is back to zero well before the
answer would have ended, the request is counted with code 499 and billed for the replica
time it held, and the tenant was charged what the model's cost counter says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shoal.contract import AccessConfig, BuildArgs, ingress_options, key_digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLEET = "leaving"
KEY = "sk-shoal-team-" + "k" * 40
#: A token every 2 s, 30 of them: an answer takes a minute, the first token 2 s.
SLOW = {"fixed_step_ms": 2000, "output_tokens": 30}
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
#: The gauge must be back within this long: far less than the minute an answer takes.
SETTLE_SECONDS = 15.0


def fleet_args() -> BuildArgs:
    return BuildArgs.parse(
        {
            "fleet_name": FLEET,
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "cpu", "costPerReplicaHour": "3600"}],  # $1 a second
                "models": [{"name": "slow", "engine": "simulated", "tier": "cpu",
                            "minReplicas": 1, "maxReplicas": 1, "engineArgs": SLOW}],
            },
            "policy": {"strategy": "static", "staticOrder": ["slow"]},
            "limits": {"first_token_timeout_seconds": 30},
            "ingress": {"num_cpus": 0.1},
        }
    )  # fmt: skip


ACCESS = AccessConfig.model_validate(
    {
        "mode": "tenants",
        "sync_interval_seconds": 0.2,
        "tenants": [{"name": "team", "key_digests": [key_digest(KEY)],
                     "max_cost_per_hour": "100000", "limits": {"concurrent_requests": 1}}],
    }
)  # fmt: skip


@pytest.fixture(scope="module")
def fleet(local_ray: Any) -> Iterator[Any]:
    from ray import serve

    from shoal.serving.app import _deployment, model_deployments
    from shoal.serving.ingress import FleetIngress

    args = fleet_args()
    ingress = _deployment(FleetIngress).options(**ingress_options(args, ACCESS))
    app = ingress.bind(args.to_serve_args(), model_deployments(args))
    serve.run(app, name=FLEET, route_prefix="/")
    yield local_ray
    serve.delete(FLEET)


def labels() -> dict[str, str]:
    return {"fleet": FLEET, "model": "slow"}


def settled(fleet: Any, before: dict[str, float]) -> dict[str, float]:
    """Wait until the request shows as over (code 499, in-flight 0); what the metrics say."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        now = read(fleet)
        if now["in_flight"] == 0 and now["abandoned"] > before["abandoned"]:
            return now
        if time.monotonic() > deadline:
            pytest.fail(f"still in flight or not counted after {SETTLE_SECONDS}s: {now}")
        time.sleep(0.5)


def read(fleet: Any) -> dict[str, float]:
    return {
        "in_flight": fleet.metric("ray_shoal_requests_in_flight", **labels()),
        "abandoned": fleet.metric("ray_shoal_requests_total", **labels(), code="499"),
        "cost": fleet.metric("ray_shoal_cost_usd_total", **labels()),
        "tenant_cost": fleet.metric("ray_shoal_tenant_cost_usd_total", fleet=FLEET, tenant="team"),
    }


def leave_before_first_token(base: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/chat/completions", json=BODY, headers=AUTH, timeout=1.0)


def leave_during_unary_answer(base: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/chat/completions", json=BODY, headers=AUTH, timeout=5.0)


def leave_mid_stream(base: str) -> None:
    body = {**BODY, "stream": True}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=30.0
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                break  # the first token arrived: leave
        else:
            pytest.fail("the stream ended before its first token")


AUTH = {"authorization": f"Bearer {KEY}"}
LEAVES = {
    "before the first token": leave_before_first_token,
    "during an unstreamed answer": leave_during_unary_answer,
    "mid-stream": leave_mid_stream,
}


@pytest.mark.xfail(
    reason="known defect below the ingress: under Ray Serve 2.60's throughput-optimized mode "
    "(HAProxy, direct ingress) the first request a new app serves is neither cancelled nor "
    "told http.disconnect when its client leaves (a plain deployment shows it too: not "
    "cancelled within 10 s, a later request cancelled in 1.3 s), so it stays in flight and "
    "holds the tenant's slot (the later cases then get 429); the ingress's books are right "
    "when it is cancelled (tests/unit/serving/test_ingress_cancel.py)",
    strict=False,
)
@pytest.mark.parametrize("leave", list(LEAVES), ids=list(LEAVES))
def test_a_client_that_leaves_is_out_of_flight_billed_and_charged(fleet: Any, leave: str) -> None:
    before = read(fleet)
    started = time.monotonic()
    LEAVES[leave](fleet.base_url)
    after = settled(fleet, before)
    assert time.monotonic() - started < 30  # long before the answer would have ended
    assert after["abandoned"] == before["abandoned"] + 1
    billed = after["cost"] - before["cost"]
    assert billed > 0.5, after  # about a second or more of a $1-a-second replica
    charged = after["tenant_cost"] - before["tenant_cost"]
    assert charged == pytest.approx(billed, rel=1e-6), (billed, charged)
    # The tenant's one concurrent slot is free again: the next request is admitted.
    r = httpx.post(
        f"{fleet.base_url}/v1/chat/completions", json={**BODY, "max_tokens": 1}, headers=AUTH,
        timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
