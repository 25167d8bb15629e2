"""The ingress logic in-process: real simulated engines behind the Endpoint, no Ray.

Overload, slowness and limits are produced by the simulator's own bounded batch and queue
and by its latency model, not by stand-ins.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from serving_fleets import sim_args

from shoal.contract import BuildArgs
from shoal.contract.serve import FEEDBACK_INSTANCE_LABEL
from shoal.serving.clients import LocalModelClient, ModelInfo
from shoal.serving.engines.simulated import SimulatedEngine
from shoal.serving.ingress import Endpoint
from shoal.serving.metrics import RouterMetrics

starlette = pytest.importorskip("starlette", reason="starlette (ray[serve]) not installed")
openai = pytest.importorskip("openai", reason="openai client not installed")

from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

SIM: dict[str, dict[str, Any]] = {
    "fast": {"fixed_step_ms": 2, "output_tokens": 4},
    "spare": {"fixed_step_ms": 2, "output_tokens": 4},
    # one request at a time, no queue: a second concurrent request is refused
    "narrow": {"fixed_step_ms": 30, "output_tokens": 10, "max_batch": 1, "max_waiting": 0},
    # every step takes a second: no first token within the ingress's timeout
    "slow": {"fixed_step_ms": 1000, "output_tokens": 2},
}


def make_endpoint(order: list[str], **extra: Any) -> Endpoint:
    raw = sim_args(list(SIM), static=order, **extra)
    for m in raw["fleet"]["models"]:
        m["engineArgs"] = SIM[m["name"]]
    args = BuildArgs.parse(raw)
    clients = {
        m.name: LocalModelClient(
            ModelInfo(m.name, m.tier, m.engine, 0.36),
            SimulatedEngine(m.name, m.engine_args, metrics=None),
        )
        for m in args.fleet.models
    }
    return Endpoint(args, clients, RouterMetrics("test", backend="prometheus"))  # type: ignore[arg-type]


@pytest.fixture()
def client_for() -> Iterator[Any]:
    opened: list[TestClient] = []

    def make(endpoint: Endpoint) -> TestClient:
        app = Starlette(
            routes=[Route("/{path:path}", endpoint.handle, methods=["GET", "POST", "PUT"])]
        )
        tc = TestClient(app)
        tc.__enter__()
        opened.append(tc)
        return tc

    yield make
    for tc in opened:
        tc.__exit__(None, None, None)


def metric(endpoint: Endpoint, name: str, **labels: str) -> float:
    if name.startswith("shoal_feedback"):  # series of this ingress process's own
        labels = {FEEDBACK_INSTANCE_LABEL: endpoint.metrics.instance, **labels}
    value = endpoint.metrics.registry.get_sample_value(name, {"fleet": "test", **labels})
    return 0.0 if value is None else float(value)


def oa(tc: TestClient) -> Any:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="x", http_client=tc, max_retries=0
    )


def test_chat_and_completions_through_the_official_client(client_for: Any) -> None:
    ep = make_endpoint(["fast", "spare"])
    client = oa(client_for(ep))
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    chat = raw.parse()
    assert raw.headers["x-shoal-model"] == "fast" == chat.model
    assert "x-shoal-routing-ms" in raw.headers and "x-shoal-cluster" not in raw.headers
    assert chat.usage is not None and chat.usage.completion_tokens == 4
    stream = client.completions.create(model="spare", prompt="x", stream=True, max_tokens=3)
    parts = list(stream)
    assert "".join(p.choices[0].text for p in parts).count(" ") == 2
    assert parts[-1].choices[0].finish_reason == "length"
    assert (
        metric(ep, "shoal_requests_total", model="fast", tier="small", api="chat", code="200") == 1
    )
    assert metric(ep, "shoal_tokens_total", model="spare", tier="small", kind="completion") == 3
    assert metric(ep, "shoal_cost_usd_total", model="fast", tier="small") > 0


def test_overload_falls_back_and_is_counted(client_for: Any) -> None:
    ep = make_endpoint(["narrow", "spare"])
    tc = client_for(ep)
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}

    async def burst() -> list[Any]:
        import httpx

        transport = httpx.ASGITransport(app=tc.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return list(
                await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(6)))
            )

    # ASGITransport runs the app in this loop: the engines start here too.
    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    models = [r.headers["x-shoal-model"] for r in responses]
    assert "narrow" in models and "spare" in models
    assert metric(ep, "shoal_fallbacks_total", model="narrow", reason="overload") == models.count(
        "spare"
    )


def test_named_model_overload_is_503_with_retry_after(client_for: Any) -> None:
    ep = make_endpoint(["narrow"])
    tc = client_for(ep)
    body = {"model": "narrow", "messages": [{"role": "user", "content": "hi"}]}

    async def burst() -> list[Any]:
        import httpx

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=tc.app), base_url="http://t"
        ) as c:
            return list(
                await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(3)))
            )

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes[0] == 200 and 503 in codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["type"] == "server_error"
    assert metric(ep, "shoal_rejected_requests_total", api="chat", code="503") >= 1


def test_no_first_token_in_time_falls_back(client_for: Any) -> None:
    ep = make_endpoint(["slow", "fast"], limits={"first_token_timeout_seconds": 0.2})
    tc = client_for(ep)
    r = tc.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 200 and r.headers["x-shoal-model"] == "fast"
    assert metric(ep, "shoal_fallbacks_total", model="slow", reason="timeout") == 1
    # The slow model is now skipped for its cooldown, and that is a fallback too.
    r = tc.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.headers["x-shoal-model"] == "fast"
    assert metric(ep, "shoal_fallbacks_total", model="slow", reason="unhealthy") == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
        ("POST", "/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999}, 400, None),
        ("POST", "/v1/completions", {"model": "auto"}, 400, None),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("GET", "/v2/nothing", None, 404, "unknown_url"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(
    client_for: Any, method: str, path: str, body: Any, status: int, code: str | None
) -> None:
    tc = client_for(make_endpoint(["fast"]))
    r = tc.request(method, path, json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code


def test_body_limit_and_bad_json(client_for: Any) -> None:
    tc = client_for(make_endpoint(["fast"], limits={"max_body_bytes": 2048}))
    big = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 4000}]})
    assert tc.post("/v1/chat/completions", content=big).status_code == 413
    r = tc.post("/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        oa(tc).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}], n=2
        )


def test_alpha_header_only_when_the_policy_allows(client_for: Any) -> None:
    raw = sim_args(["fast"])
    raw["policy"]["allowRequestOverrides"] = True
    tc = client_for(make_endpoint(["fast"], policy=raw["policy"]))
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    assert (
        tc.post("/v1/chat/completions", json=body, headers={"x-shoal-alpha": "0.2"}).status_code
        == 200
    )
    assert (
        tc.post("/v1/chat/completions", json=body, headers={"x-shoal-alpha": "2"}).status_code
        == 400
    )
    strict = client_for(make_endpoint(["fast"]))
    assert (
        strict.post("/v1/chat/completions", json=body, headers={"x-shoal-alpha": "2"}).status_code
        == 200
    )


def test_models_health_and_readiness(client_for: Any) -> None:
    ep = make_endpoint(["fast"])
    tc = client_for(ep)
    ids = [m.id for m in oa(tc).models.list()]
    assert ids == ["auto", *SIM]
    assert tc.get("/health").status_code == 200
    assert tc.get("/ready").status_code == 503  # nothing probed or answered yet
    tc.post(
        "/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
    )
    ready = tc.get("/ready")
    assert ready.status_code == 200 and ready.json()["models_ready"] == 1
    # Probes carry no key: /ready and / name no model.
    for path in ("/ready", "/"):
        assert "fast" not in tc.get(path).text


def test_in_flight_gauge_is_published_when_it_changed() -> None:
    endpoint = make_endpoint(["fast"])

    def gauge(model: str) -> float:
        tier = endpoint.clients[model].info.tier
        return metric(endpoint, "shoal_requests_in_flight", model=model, tier=tier)

    endpoint.in_flight["fast"] = 3
    endpoint.publish_in_flight()
    assert (gauge("fast"), gauge("spare")) == (3, 0)
    endpoint.in_flight["fast"] = 0
    endpoint.publish_in_flight()
    assert gauge("fast") == 0


def test_parked_model_is_routed_around_unless_named(client_for: Any) -> None:
    """A model the autoscaler scaled to zero is passed over (a fallback of reason "parked");
    named explicitly, it is still called (Ray Serve starts a replica for it)."""
    ep = make_endpoint(["fast", "spare"], replicas={"fast": 0})
    tc = client_for(ep)
    msg = [{"role": "user", "content": "hi"}]
    auto = tc.post("/v1/chat/completions", json={"model": "auto", "messages": msg})
    assert auto.status_code == 200 and auto.headers["x-shoal-model"] == "spare"
    assert metric(ep, "shoal_fallbacks_total", model="fast", reason="parked") == 1
    named = tc.post("/v1/chat/completions", json={"model": "fast", "messages": msg})
    assert named.status_code == 200 and named.headers["x-shoal-model"] == "fast"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/v1/chat/completions", "POST"), ("PUT", "/v1/models", "GET"),
     ("POST", "/v1/models/fast", "GET"), ("POST", "/ready/", "GET")],
)  # fmt: skip
def test_wrong_method_is_405_with_allow(
    client_for: Any, method: str, path: str, allow: str
) -> None:
    r = client_for(make_endpoint(["fast"])).request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow


def test_a_model_the_request_cannot_go_to_is_passed_over(client_for: Any) -> None:
    """The simulator serves no tools: a request with tools to a simulated-only fleet is a 400
    that names the parameter; with tool_choice none it is served."""
    tc = client_for(make_endpoint(["fast"]))
    tools = [{"type": "function", "function": {"name": "f"}}]
    msgs = [{"role": "user", "content": "x"}]
    r = tc.post("/v1/chat/completions", json={"model": "auto", "messages": msgs, "tools": tools})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    r = tc.post("/v1/chat/completions", json={"model": "fast", "messages": msgs, "tools": tools})
    assert r.status_code == 400 and "fast" in r.json()["error"]["message"]
    ok = {"model": "auto", "messages": msgs, "tools": tools, "tool_choice": "none"}
    assert tc.post("/v1/chat/completions", json=ok).status_code == 200


def test_feedback_on_an_answer_is_counted_for_its_model(client_for: Any) -> None:
    ep = make_endpoint(["fast", "spare"])
    tc = client_for(ep)
    chat = oa(tc).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    r = tc.post("/v1/feedback", json={"id": chat.id, "score": 0.75})
    assert r.status_code == 200 and r.json()["model"] == "fast"
    assert metric(ep, "shoal_feedback_total", model="fast", cluster="") == 1
    assert metric(ep, "shoal_feedback_score_total", model="fast", cluster="") == 0.75
    # One score per answer: a replay is refused and not counted.
    again = tc.post("/v1/feedback", json={"id": chat.id, "score": 0.75})
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "feedback_already_given"
    assert metric(ep, "shoal_feedback_total", model="fast", cluster="") == 1
    forged = chat.id.replace(".fast.", ".spare.")
    r = tc.post("/v1/feedback", json={"id": forged, "score": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_completion_id"
    assert metric(ep, "shoal_feedback_total", model="spare", cluster="") == 0


class ScoredRankerFake:
    """A fake ranker with scores (the cluster ranker's shape), for exploration below the
    real-router tests."""

    strategy = "cluster"
    blocking = False

    def rank(self, text: str, alpha: float | None = None) -> Any:
        from shoal.serving.ranking import Ranking

        return Ranking(["fast", "spare"], 3, 0.1, "cluster", {"fast": 0.9, "spare": 0.88})


def test_an_explored_request_says_so(client_for: Any) -> None:
    ep = make_endpoint(["fast", "spare"], policy={
        "strategy": "static", "staticOrder": ["fast", "spare"],
        "exploration": {"percent": 20, "qualityMargin": "0.05"}})  # fmt: skip
    assert ep.explorer is not None
    ep.ranker = ScoredRankerFake()
    ep.explorer._rng = lambda: 0.0  # always within the share
    r = client_for(ep).post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.headers["x-shoal-explored"] == "spare" and r.headers["x-shoal-model"] == "spare"
    assert r.headers["x-shoal-propensity"] == "0.2000"  # 20% over one near model
    assert metric(ep, "shoal_explorations_total", model="spare") == 1


def test_feedback_on_an_explored_answer_is_weighed_by_its_signed_propensity(
    client_for: Any,
) -> None:
    ep = make_endpoint(["fast", "spare"], policy={
        "strategy": "static", "staticOrder": ["fast", "spare"],
        "exploration": {"percent": 20, "qualityMargin": "0.05"}})  # fmt: skip
    assert ep.explorer is not None
    ep.ranker = ScoredRankerFake()
    ep.explorer._rng = lambda: 0.0  # always within the share
    tc = client_for(ep)
    r = tc.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
    )
    cid = r.json()["id"]
    assert cid.startswith("chatcmpl-p02000-")  # the decision's 0.2, signed into the id
    assert tc.post("/v1/feedback", json={"id": cid, "score": 1}).status_code == 200

    def events(split: str) -> float:
        return metric(ep, "shoal_feedback_logged_total", model="spare", cluster="3",
                      split=split, stat="events")  # fmt: skip

    splits = [split for split in ("fit", "heldout") if events(split) == 1]
    assert len(splits) == 1  # one split, from the id's nonce
    labels = {"model": "spare", "cluster": "3", "split": splits[0]}
    assert metric(ep, "shoal_feedback_logged_total", **labels, stat="weight") == 5.0
    assert metric(ep, "shoal_feedback_logged_total", **labels, stat="weighted_score") == 5.0


def test_routes_match_under_the_application_s_route_prefix() -> None:
    """Ray Serve hands an application under /fleet the whole path and /fleet as root_path."""
    from starlette.requests import Request

    from shoal.serving.routes import relative_path

    def req(path: str, root: str) -> Request:
        return Request({"type": "http", "path": path, "root_path": root, "headers": [],
                        "query_string": b"", "method": "GET"})  # fmt: skip

    assert relative_path(req("/fleet/v1/models/", "/fleet")) == "/v1/models"
    assert relative_path(req("/v1/models", "")) == "/v1/models"
    assert relative_path(req("/fleet", "/fleet")) == "/"
