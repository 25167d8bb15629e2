"""A client that goes away: the ingress's books stay right (in-process, real simulated engines).

Ray Serve cancels the ingress's request task when its HTTP client disconnects; here the task
is cancelled directly, at the three places a client can leave: before the model's first
token, during an unstreamed answer, and mid-stream. After each, the model's in-flight count
is back to zero (the autoscaler reads it), the request is billed for the replica time it held
(``shoal_cost_usd_total``, code 499) and its tenant's spend and concurrency slot agree. The
real disconnect through Ray Serve's proxy is in tests/integration/serving/test_disconnects.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from serving_fleets import sim_args

from shoal.contract import AccessConfig, BuildArgs, key_digest
from shoal.serving.clients import LocalModelClient, ModelInfo
from shoal.serving.engines.simulated import SimulatedEngine
from shoal.serving.ingress import Endpoint
from shoal.serving.metrics import RouterMetrics

pytest.importorskip("starlette", reason="starlette (ray[serve]) not installed")

from starlette.requests import Request

KEY = "sk-team-" + "a" * 40
#: Steps of 300 ms: the first token comes a step or two after the request, the answer seconds
#: later.
SLOW = {"fixed_step_ms": 300, "output_tokens": 40}


def endpoint() -> Endpoint:
    raw = sim_args(["slow"])
    raw["fleet"]["models"][0]["engineArgs"] = SLOW
    args = BuildArgs.parse(raw)
    clients = {
        m.name: LocalModelClient(
            ModelInfo(m.name, m.tier, m.engine, 3600.0),  # $1 a replica-second
            SimulatedEngine(m.name, m.engine_args, metrics=None),
        )
        for m in args.fleet.models
    }
    return Endpoint(args, clients, RouterMetrics("test", backend="prometheus"))  # type: ignore[arg-type]


def request(stream: bool, key: str | None = None) -> Request:
    body = json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ).encode()
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client says nothing more until it leaves
        raise AssertionError("unreachable")

    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "",
        "query_string": b"", "headers": headers, "scheme": "http", "server": ("t", 80),
    }  # fmt: skip
    return Request(scope, receive)


def metric(ep: Endpoint, name: str, **labels: str) -> float:
    value = ep.metrics.registry.get_sample_value(name, {"fleet": "test", **labels})
    return 0.0 if value is None else float(value)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def leave_before_first_token(ep: Endpoint, key: str | None) -> None:
    task = asyncio.create_task(ep.handle(request(stream=False, key=key)))
    await until(lambda: ep.in_flight["slow"] == 1)
    await cancelled(task)


async def leave_during_unary_answer(ep: Endpoint, key: str | None) -> None:
    task = asyncio.create_task(ep.handle(request(stream=False, key=key)))
    # The first token came (the model answered once), the rest of the answer has not.
    await until(lambda: "slow" in ep.book.last_ok)
    await asyncio.sleep(0.1)
    await cancelled(task)


async def leave_mid_stream(ep: Endpoint, key: str | None) -> None:
    req = request(stream=True, key=key)
    response = await ep.handle(req)
    assert response.status_code == 200
    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message.get("body", b""))

    task = asyncio.create_task(response(req.scope, req.receive, send))
    await until(lambda: len(bodies) >= 2)  # a couple of events reached the client
    await cancelled(task)


LEAVES: dict[str, Callable[[Endpoint, str | None], Awaitable[None]]] = {
    "before the first token": leave_before_first_token,
    "during an unstreamed answer": leave_during_unary_answer,
    "mid-stream": leave_mid_stream,
}


@pytest.mark.parametrize("leave", list(LEAVES), ids=list(LEAVES))
def test_a_client_gone_leaves_no_request_in_flight_and_is_billed(leave: str) -> None:
    ep = endpoint()

    async def scenario() -> None:
        await LEAVES[leave](ep, None)
        assert ep.in_flight["slow"] == 0
        # The next request is billed alone on its model (a leaked count would share it).
        answered = await ep.handle(request(stream=False))
        assert answered.status_code == 200

    asyncio.run(scenario())
    assert ep.in_flight["slow"] == 0
    labels = {"model": "slow", "tier": "small", "api": "chat"}
    assert metric(ep, "shoal_requests_total", **labels, code="499") == 1
    assert metric(ep, "shoal_requests_total", **labels, code="200") == 1
    assert metric(ep, "shoal_cost_usd_total", model="slow", tier="small") > 0.1


@pytest.mark.parametrize("leave", list(LEAVES), ids=list(LEAVES))
def test_a_tenant_whose_client_went_away_is_charged_and_keeps_no_slot(leave: str) -> None:
    ep = endpoint()
    access = AccessConfig.model_validate(
        {
            "mode": "tenants",
            "tenants": [
                {"name": "team", "key_digests": [key_digest(KEY)], "max_cost_per_hour": "1000",
                 "limits": {"concurrent_requests": 1}},
            ],
        }
    )  # fmt: skip

    async def scenario() -> None:
        await ep.configure_access(access)
        await LEAVES[leave](ep, KEY)
        assert ep.usage_sync is not None
        await ep.usage_sync.stop()

    asyncio.run(scenario())
    assert ep.gate is not None
    team = ep.gate.tenants["team"]
    assert team.in_flight == 0 and not team.open
    spent = ep.gate.spent(team, ep.gate.clock())
    billed = metric(ep, "shoal_cost_usd_total", model="slow", tier="small")
    assert spent > 0 and spent == pytest.approx(billed)
    assert metric(ep, "shoal_tenant_cost_usd_total", tenant="team") == pytest.approx(billed)
    assert metric(ep, "shoal_tenant_requests_total", tenant="team", model="slow", code="499") == 1
