"""A model served outside the fleet, behind the real Endpoint, in process.

The "endpoint" here is a fake OpenAI server (an httpx MockTransport, named ``FakeEndpoint``)
so that every failure it can answer with is at hand: 401, 5xx, 429, 400, silence, no usage.
The same path against a real OpenAI-compatible server (llama.cpp's) and a real Ray is
tests/integration/serving/test_external_models.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_fleets import sim_args

from shoal.contract import MODEL_KEYS_DIR_ENV, BuildArgs
from shoal.serving.clients import LocalModelClient, ModelInfo
from shoal.serving.engines.simulated import SimulatedEngine
from shoal.serving.external import ExternalModelClient, external_clients
from shoal.serving.ingress import Endpoint
from shoal.serving.metrics import RouterMetrics

starlette = pytest.importorskip("starlette", reason="starlette (ray[serve]) not installed")
openai = pytest.importorskip("openai", reason="openai client not installed")

from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

KEY = "sk-test-0123456789abcdef-never-logged"
PRICE = {"inputPerMillion": "2.50", "outputPerMillion": "10.00"}
REFERENCE = {"inputPerMillion": "10.00", "outputPerMillion": "30.00"}


class FakeEndpoint:
    """A fake OpenAI server: answers as ``mode`` says and records what it was sent."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": []})
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.mode == "unauthorized":
            key = request.headers.get("authorization", "")[len("Bearer ") :]
            return httpx.Response(
                401, json={"error": {"message": f"Incorrect API key provided: {key}"}}
            )
        if self.mode == "server-error":
            key = request.headers.get("authorization", "")[len("Bearer ") :]
            return httpx.Response(503, text=f"upstream connect error (key {key})")
        if self.mode == "rate-limited":
            return httpx.Response(429, json={"error": {"message": "Rate limit reached"}})
        if self.mode == "bad-request":
            return httpx.Response(
                400,
                json={"error": {"message": "max_tokens is too large", "param": "max_tokens",
                                "code": "invalid_value"}},
            )  # fmt: skip
        if self.mode == "silent":
            await asyncio.sleep(30)
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=self._events(body),
        )

    def _events(self, body: dict[str, Any]) -> bytes:
        head = {"id": "upstream-1", "object": "chat.completion.chunk", "created": 1,
                "model": body["model"]}  # fmt: skip
        events: list[dict[str, Any]] = []
        if body.get("tools"):
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
            events.append({**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                           "tool_calls": [call]}, "finish_reason": None}]})  # fmt: skip
            events.append(
                {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
            )
        else:
            for word in ("Hello", " from", " far", " away."):
                events.append(
                    {
                        **head,
                        "choices": [
                            {"index": 0, "delta": {"content": word}, "finish_reason": None}
                        ],
                    }
                )
            events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if self.mode != "no-usage":
            events.append({**head, "choices": [],
                           "usage": {"prompt_tokens": 1000, "completion_tokens": 500,
                                     "total_tokens": 1500}})  # fmt: skip
        out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        return out + b"data: [DONE]\n\n"


def make_endpoint(
    fake: FakeEndpoint,
    order: list[str],
    key: bool = True,
    limits: dict[str, Any] | None = None,
    **external: Any,
) -> Endpoint:
    raw = sim_args(["local"], static=order, limits=limits or {})
    raw["fleet"]["models"][0]["engineArgs"] = {"fixed_step_ms": 1, "output_tokens": 3}
    big: dict[str, Any] = {
        "name": "big", "engine": "openai", "tier": "small",
        "external": {"baseUrl": "https://api.example.com/v1", "model": "gpt-4o",
                     "price": PRICE, **external},
    }  # fmt: skip
    if key:
        big["external"]["apiKeySecretRef"] = {"name": "openai", "key": "token"}
    raw["fleet"]["models"].append(big)
    raw["fleet"]["savings"] = {"referencePrice": REFERENCE}
    args = BuildArgs.parse(raw)
    local = args.model("local")
    clients: dict[str, Any] = {
        "local": LocalModelClient(
            ModelInfo("local", "small", "simulated", 0.36),
            SimulatedEngine("local", local.engine_args, metrics=None),
        ),
        **external_clients(args, transport=httpx.MockTransport(fake)),
    }
    return Endpoint(args, clients, RouterMetrics("test", backend="prometheus"))


@pytest.fixture()
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The mounted keys directory, holding the key of model "big"."""
    (tmp_path / "big").write_text(KEY + "\n")
    monkeypatch.setenv(MODEL_KEYS_DIR_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture()
def client_for() -> Iterator[Any]:
    opened: list[TestClient] = []

    def make(endpoint: Endpoint) -> Any:
        app = Starlette(routes=[Route("/{path:path}", endpoint.handle, methods=["GET", "POST"])])
        tc = TestClient(app)
        tc.__enter__()
        opened.append(tc)
        return openai.OpenAI(
            base_url="http://testserver/v1", api_key="x", http_client=tc, max_retries=0
        )

    yield make
    for tc in opened:
        tc.__exit__(None, None, None)


def metric(endpoint: Endpoint, name: str, **labels: str) -> float:
    value = endpoint.metrics.registry.get_sample_value(name, {"fleet": "test", **labels})
    return 0.0 if value is None else float(value)


ASK = [{"role": "user", "content": "Say hello."}]


def test_named_streaming_request_passes_through_with_the_fleets_id_and_name(
    keys: Path, client_for: Any
) -> None:
    fake = FakeEndpoint()
    ep = make_endpoint(fake, ["local", "big"])
    client = client_for(ep)
    stream = client.chat.completions.create(
        model="big", messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    events = list(stream)
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == "Hello from far away."
    assert all(e.model == "big" and e.id.startswith("chatcmpl-") for e in events)
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 500
    sent = fake.bodies[0]
    assert sent["model"] == "gpt-4o" and sent["stream"] is True
    assert sent["messages"] == ASK
    assert fake.requests[0].headers["authorization"] == f"Bearer {KEY}"
    # Billed per token: 1000 * 2.50 / 1e6 + 500 * 10 / 1e6.
    cost = metric(ep, "shoal_cost_usd_total", model="big", tier="small")
    assert cost == pytest.approx(0.0075)
    reference = metric(ep, "shoal_reference_cost_usd_total", model="big", tier="small")
    assert reference == pytest.approx(0.025)  # 1000 * 10 / 1e6 + 500 * 30 / 1e6


def test_auto_routes_to_the_external_model_when_it_is_ranked_first(
    keys: Path, client_for: Any
) -> None:
    ep = make_endpoint(FakeEndpoint(), ["big", "local"])
    raw = client_for(ep).chat.completions.with_raw_response.create(model="auto", messages=ASK)
    chat = raw.parse()
    assert raw.headers["x-shoal-model"] == "big"
    assert chat.choices[0].message.content == "Hello from far away."
    assert chat.usage.prompt_tokens == 1000 and chat.model == "big"


def test_a_tool_call_passes_through(keys: Path, client_for: Any) -> None:
    fake = FakeEndpoint()
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
    ep = make_endpoint(fake, ["big", "local"])
    chat = client_for(ep).chat.completions.create(model="big", messages=ASK, tools=[tool])
    call = chat.choices[0].message.tool_calls[0]
    assert chat.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Oslo"
    }
    assert fake.bodies[0]["tools"] == [tool]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("unauthorized", "error"), ("server-error", "error"), ("rate-limited", "overload")],
)
def test_a_refusal_falls_back_to_the_next_model(
    keys: Path, client_for: Any, mode: str, reason: str
) -> None:
    ep = make_endpoint(FakeEndpoint(mode), ["big", "local"])
    raw = client_for(ep).chat.completions.with_raw_response.create(model="auto", messages=ASK)
    assert raw.headers["x-shoal-model"] == "local"
    assert metric(ep, "shoal_fallbacks_total", model="big", reason=reason) == 1


@pytest.mark.parametrize(
    ("mode", "said"),
    [("unauthorized", "refused the API key (401)"), ("server-error", "answered 503")],
)
def test_a_refusal_of_the_only_model_is_a_clear_error_at_once(
    keys: Path, client_for: Any, caplog: pytest.LogCaptureFixture, mode: str, said: str
) -> None:
    ep = make_endpoint(FakeEndpoint(mode), ["big"])
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(openai.APIStatusError) as err:
        client_for(ep).chat.completions.create(model="big", messages=ASK)
    assert time.monotonic() - started < 5
    assert err.value.status_code == 503 and "last error: error" in str(err.value)
    assert said in caplog.text
    assert KEY not in caplog.text


def test_an_endpoint_that_says_nothing_is_left_for_the_next_model_in_time(
    keys: Path, client_for: Any
) -> None:
    ep = make_endpoint(
        FakeEndpoint("silent"), ["big", "local"], limits={"first_token_timeout_seconds": 0.5}
    )
    started = time.monotonic()
    raw = client_for(ep).chat.completions.with_raw_response.create(model="auto", messages=ASK)
    assert raw.headers["x-shoal-model"] == "local"
    assert time.monotonic() - started < 10
    assert metric(ep, "shoal_fallbacks_total", model="big", reason="timeout") == 1


def test_the_endpoints_400_is_the_clients_error(keys: Path, client_for: Any) -> None:
    ep = make_endpoint(FakeEndpoint("bad-request"), ["big"])
    with pytest.raises(openai.BadRequestError) as err:
        client_for(ep).chat.completions.create(model="big", messages=ASK)
    assert "max_tokens is too large" in str(err.value)


def test_no_key_is_sent_unless_the_operator_mounted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_for: Any
) -> None:
    monkeypatch.setenv(MODEL_KEYS_DIR_ENV, str(tmp_path))  # empty: the key was not granted
    fake = FakeEndpoint()
    ep = make_endpoint(fake, ["big", "local"])
    raw = client_for(ep).chat.completions.with_raw_response.create(model="auto", messages=ASK)
    assert raw.headers["x-shoal-model"] == "local"
    assert fake.requests == []  # nothing went out without the key it needs
    # A model that needs no key sends none.
    fake = FakeEndpoint()
    ep = make_endpoint(fake, ["big"], key=False)
    client_for(ep).chat.completions.create(model="big", messages=ASK)
    assert "authorization" not in fake.requests[0].headers


def test_an_answer_without_usage_is_still_billed(keys: Path, client_for: Any) -> None:
    ep = make_endpoint(FakeEndpoint("no-usage"), ["big"])
    client = client_for(ep)
    chat = client.chat.completions.create(model="big", messages=ASK)
    assert chat.choices[0].message.content == "Hello from far away."
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0  # estimated
    assert metric(ep, "shoal_cost_usd_total", model="big", tier="small") > 0
    stream = client.chat.completions.create(
        model="big", messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    events = list(stream)
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == (
        "Hello from far away."
    )
    assert events[-1].usage is not None and events[-1].usage.completion_tokens > 0


def test_the_concurrency_cap_counts_as_overload(keys: Path) -> None:
    from shoal.serving.clients import ModelOverloaded
    from shoal.serving.engines.base import GenerationRequest

    ep = make_endpoint(FakeEndpoint("silent"), ["big"], maxConcurrentRequests=1)
    client = ep.clients["big"]
    assert isinstance(client, ExternalModelClient)
    req = GenerationRequest(request_id="r", kind="chat", max_tokens=4, messages=ASK)

    async def run() -> None:
        first = client.stream(req, False)
        waiting = asyncio.ensure_future(anext(first))
        while client.in_flight == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(ModelOverloaded):
            await anext(client.stream(req, False))
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await first.aclose()
        assert client.in_flight == 0

    asyncio.run(run())


def test_models_lists_the_external_model(keys: Path, client_for: Any) -> None:
    ep = make_endpoint(FakeEndpoint(), ["big", "local"])
    models = client_for(ep).models.list()
    entry = next(m for m in models.data if m.id == "big")
    assert entry.model_extra["shoal"] == {"tier": "small", "engine": "openai"}
