"""The ingress with tenants in-process: real simulated engines behind the Endpoint, the
official ``openai`` client, the in-process usage store (the Ray actor is the integration
tests' business)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from serving_fleets import sim_args

from shoal.contract import AccessConfig, BuildArgs, key_digest
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

KEY = "sk-team-" + "a" * 40
OTHER = "sk-other-" + "b" * 40


def endpoint() -> Endpoint:
    raw = sim_args(["fast", "spare"])
    for m in raw["fleet"]["models"]:
        m["engineArgs"] = {"fixed_step_ms": 1, "output_tokens": 4}
    args = BuildArgs.parse(raw)
    clients = {
        m.name: LocalModelClient(
            ModelInfo(m.name, m.tier, m.engine, 0.36),
            SimulatedEngine(m.name, m.engine_args, metrics=None),
        )
        for m in args.fleet.models
    }
    return Endpoint(args, clients, RouterMetrics("test", backend="prometheus"))  # type: ignore[arg-type]


ACCESS = AccessConfig.model_validate(
    {
        "mode": "tenants",
        "tenants": [
            {"name": "team", "key_digests": [key_digest(KEY)],
             "limits": {"requests_per_minute": 3, "tokens_per_minute": 1000}},
            {"name": "other", "key_digests": [key_digest(OTHER)], "models": ["spare"],
             "max_alpha": 0.4},
        ],
    }
)  # fmt: skip


def serve(ep: Endpoint) -> TestClient:
    app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["GET", "POST"])])
    return TestClient(app)


def oa(tc: TestClient, key: str) -> Any:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=tc, max_retries=0
    )


def metric(ep: Endpoint, name: str, **labels: str) -> float:
    if name.startswith("shoal_feedback"):  # series of this ingress process's own
        labels = {FEEDBACK_INSTANCE_LABEL: ep.metrics.instance, **labels}
    value = ep.metrics.registry.get_sample_value(name, {"fleet": "test", **labels})
    return 0.0 if value is None else float(value)


def test_keys_limits_headers_models_and_series() -> None:
    ep = endpoint()
    with serve(ep) as tc:
        assert tc.get("/v1/models").status_code == 200  # open until configured
        tc.portal.call(ep.configure_access, ACCESS)  # type: ignore[union-attr]
        assert tc.get("/v1/models").status_code == 401
        assert tc.get("/healthz").status_code == 200
        with pytest.raises(openai.AuthenticationError) as err:
            oa(tc, "sk-wrong-" + "c" * 40).chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.code == "invalid_api_key"
        team = oa(tc, KEY)
        for remaining in ("2", "1", "0"):
            raw = team.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "hi"}]
            )
            assert raw.headers["x-ratelimit-remaining-requests"] == remaining
            assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
        with pytest.raises(openai.RateLimitError) as limited:
            team.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert limited.value.response.headers["retry-after"]
        # streaming counts its tokens when the stream ends
        other = oa(tc, OTHER)
        raw = other.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        assert raw.headers["x-shoal-model"] == "spare"  # its only model
        assert float(raw.headers["x-shoal-alpha"]) == 0.4  # its ceiling
        assert [c for c in raw.parse() if c.usage]
        with pytest.raises(openai.NotFoundError) as denied:
            other.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
        assert denied.value.code == "model_not_found"
        assert {m.id for m in other.models.list()} == {"auto", "spare"}
    assert metric(ep, "shoal_tenant_requests_total", tenant="team", model="fast", code="200") == 3
    assert metric(ep, "shoal_tenant_rejections_total", tenant="team", reason="requests") == 1
    assert metric(ep, "shoal_tenant_rejections_total", tenant="other", reason="model") == 1
    assert metric(ep, "shoal_tenant_tokens_total", tenant="other", kind="completion") == 4
    assert metric(ep, "shoal_tenant_cost_usd_total", tenant="team") > 0
    assert ep.gate is not None and ep.gate.tenants["team"].in_flight == 0
    assert ep.gate.tenants["other"].in_flight == 0
    assert metric(ep, "shoal_rejected_requests_total", api="chat", code="401") == 1


def test_open_mode_drops_the_gate() -> None:
    ep = endpoint()

    async def run() -> None:
        await ep.configure_access(ACCESS)
        assert ep.gate is not None and ep.usage_sync is not None
        await ep.configure_access(AccessConfig())
        assert ep.gate is None and ep.usage_sync is None

    asyncio.run(run())


def test_feedback_is_taken_from_the_tenant_that_got_the_answer_only() -> None:
    ep = endpoint()
    with serve(ep) as tc:
        tc.portal.call(ep.configure_access, ACCESS)  # type: ignore[union-attr]
        chat = oa(tc, OTHER).chat.completions.create(
            model="spare", messages=[{"role": "user", "content": "hi"}]
        )

        def score(key: str) -> Any:
            headers = {"authorization": f"Bearer {key}"}
            return tc.post("/v1/feedback", json={"id": chat.id, "score": 1}, headers=headers)

        stolen = score(KEY)  # another tenant that learnt the id
        assert stolen.status_code == 400, stolen.text
        assert stolen.json()["error"]["code"] == "invalid_completion_id"
        assert score(OTHER).status_code == 200
        assert score(OTHER).status_code == 409  # once per answer
        assert metric(ep, "shoal_feedback_total", model="spare", cluster="") == 1


def test_a_tenant_over_its_request_limit_is_refused_before_its_body_is_read() -> None:
    """Refused by its request count, a request is not parsed, not routed and not counted as
    routing demand (the autoscaler sizes models from the router's decisions)."""
    ep = endpoint()
    one = AccessConfig.model_validate(
        {
            "mode": "tenants",
            "tenants": [{"name": "team", "key_digests": [key_digest(KEY)],
                         "limits": {"requests_per_minute": 1}}],
        }
    )  # fmt: skip
    auth = {"authorization": f"Bearer {KEY}"}
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    with serve(ep) as tc:
        tc.portal.call(ep.configure_access, one)  # type: ignore[union-attr]
        assert tc.post("/v1/chat/completions", json=body, headers=auth).status_code == 200
        decided = metric(ep, "shoal_routing_decisions_total", strategy="static", model="fast",
                         cluster="")  # fmt: skip
        assert decided == 1
        # Not even JSON: a 429 all the same, since the body is never read.
        refused = tc.post("/v1/chat/completions", content=b"{not json", headers=auth)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert tc.post("/v1/chat/completions", json=body, headers=auth).status_code == 429
    assert metric(ep, "shoal_routing_decisions_total", strategy="static", model="fast",
                  cluster="") == decided  # fmt: skip
    assert metric(ep, "shoal_tenant_rejections_total", tenant="team", reason="requests") == 2
    assert ep.gate is not None and ep.gate.tenants["team"].in_flight == 0


def test_a_prompt_over_the_token_limit_is_refused_before_routing() -> None:
    ep = endpoint()
    few = AccessConfig.model_validate(
        {
            "mode": "tenants",
            "tenants": [{"name": "team", "key_digests": [key_digest(KEY)],
                         "limits": {"tokens_per_minute": 50}}],
        }
    )  # fmt: skip
    long = {"model": "auto", "messages": [{"role": "user", "content": "word " * 200}]}
    with serve(ep) as tc:
        tc.portal.call(ep.configure_access, few)  # type: ignore[union-attr]
        refused = tc.post(
            "/v1/chat/completions", json=long, headers={"authorization": f"Bearer {KEY}"}
        )
        assert refused.status_code == 429, refused.text
        assert refused.headers["x-ratelimit-limit-tokens"] == "50"
    assert metric(ep, "shoal_routing_decisions_total", strategy="static", model="fast",
                  cluster="") == 0  # fmt: skip
    assert metric(ep, "shoal_tenant_rejections_total", tenant="team", reason="tokens") == 1
    assert ep.gate is not None and ep.gate.tenants["team"].in_flight == 0
