"""The tiny specialists fleet for real: Ray Serve, llama.cpp tiny models, the fitted router,
spoken to with the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.contract import BuildArgs
from shoal.devtools.testing import REPO_ROOT
from shoal.serving.tinymodel import reply_pieces

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The tiny specialists (deterministic text; the quickstart serves a real model instead).
QUICKSTART = REPO_ROOT / "tests" / "integration" / "tiny_specialists.yaml"
REPLIES = {
    "math": "Math specialist: 6 times 7 is 42.",
    "code": "Code specialist: use sorted(items) in Python.",
    "chat": "Chat specialist: happy to talk, ask me anything!",
}
# Held-out prompts (not in the calibration data), three of each kind.
PROMPTS = {
    "math": ["What is 12 squared?", "Solve 2x - 5 = 11 for x.", "What is 30% of 90?"],
    "code": [
        "How do I parse command line arguments in Python?",
        "Write a regex that matches an email address.",
        "What is a null pointer exception in Java?",
    ],
    "chat": [
        "What is a nice gift for my mother?",
        "Tell me a joke about dogs.",
        "What book should I read on holiday?",
    ],
}


@pytest.fixture(scope="module")
def fleet(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ray import serve

    from shoal.local.manifests import fit_local_router, load_fleet_file
    from shoal.serving.app import build_app

    manifests = load_fleet_file(QUICKSTART)
    folder: Path = tmp_path_factory.mktemp("quickstart")
    artifact = fit_local_router(manifests)
    assert artifact is not None
    (folder / "router.bin").write_bytes(artifact)
    args = BuildArgs(
        fleet_name=manifests.fleet.metadata.name,
        fleet=manifests.fleet.spec,
        policy=manifests.policy.spec,
        router_artifact_path=str(folder / "router.bin"),
        model_paths={m.name: str(folder / f"{m.name}.gguf") for m in manifests.fleet.spec.models},
        limits={"max_body_bytes": 65536, "max_tokens": 256},
    )
    serve.run(build_app(args), name="quickstart", route_prefix="/")
    yield local_ray
    serve.delete("quickstart")


@pytest.fixture()
def client(fleet: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{fleet.base_url}/v1", api_key="unused", max_retries=0)


def test_chat_non_streaming(client: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is 7 times 8?"}]
    )
    chat = raw.parse()
    model = raw.headers["x-shoal-model"]
    assert chat.model == model and chat.choices[0].message.content == REPLIES[model]
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.completion_tokens == len(reply_pieces(REPLIES[model]))
    assert int(raw.headers["x-shoal-cluster"]) >= 0
    assert 0 < float(raw.headers["x-shoal-routing-ms"]) < 1000


def test_chat_streaming(client: Any) -> None:
    stream = client.chat.completions.create(
        model="code",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLIES["code"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_completions_both_ways(client: Any) -> None:
    done = client.completions.create(model="math", prompt="Once upon a time", max_tokens=4)
    assert done.choices[0].text == "Math specialist: 6"
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 4
    parts = list(client.completions.create(model="chat", prompt="x", max_tokens=50, stream=True))
    assert "".join(p.choices[0].text for p in parts) == REPLIES["chat"]


def test_auto_routes_kinds_to_their_specialists(client: Any) -> None:
    answered: dict[str, list[str]] = {}
    for kind, prompts in PROMPTS.items():
        for prompt in prompts:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            model = raw.headers["x-shoal-model"]
            assert raw.parse().choices[0].message.content == REPLIES[model]
            answered.setdefault(kind, []).append(model)
    # Each kind goes, by majority, to its own specialist: three different models.
    majority = {kind: max(set(ms), key=ms.count) for kind, ms in answered.items()}
    assert majority == {"math": "math", "code": "code", "chat": "chat"}, answered


def test_named_model_bypasses_the_router(client: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "What is 12 squared?"}]
    )
    assert raw.headers["x-shoal-model"] == "chat"
    assert "x-shoal-cluster" not in raw.headers
    assert raw.parse().choices[0].message.content == REPLIES["chat"]


def test_request_alpha_override(fleet: Any) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "What is 12 squared?"}]}
    url = f"{fleet.base_url}/v1/chat/completions"
    assert httpx.post(url, json=body, headers={"x-shoal-alpha": "0.9"}).status_code == 200
    bad = httpx.post(url, json=body, headers={"x-shoal-alpha": "-1"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-shoal-alpha"


def test_bad_requests_are_openai_errors(client: Any, fleet: Any) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}], max_tokens=100_000
        )
    assert br.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    url = f"{fleet.base_url}/v1/chat/completions"
    too_big = httpx.post(url, content=b"{" + b" " * 70_000 + b"}")
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(url, content=b"not json").status_code == 400
    assert httpx.get(f"{fleet.base_url}/v1/nothing").status_code == 404


def test_models_health_ready_and_metrics(client: Any, fleet: Any) -> None:
    assert [m.id for m in client.models.list()] == ["auto", "math", "code", "chat"]
    assert httpx.get(f"{fleet.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{fleet.base_url}/ready").status_code == 200
    client.chat.completions.create(model="math", messages=[{"role": "user", "content": "x"}])
    n = fleet.wait_metric(
        "ray_shoal_requests_total", lambda v: v >= 1, model="math", api="chat", code="200"
    )
    assert n >= 1
    text = fleet.scrape()
    for name in (
        "ray_shoal_routing_decisions_total",
        "ray_shoal_routing_latency_seconds_bucket",
        "ray_shoal_time_to_first_token_seconds_bucket",
        "ray_shoal_request_duration_seconds_bucket",
        "ray_shoal_tokens_total",
        "ray_shoal_cost_usd_total",
        "ray_llamacpp_time_to_first_token_seconds_bucket",
    ):
        assert name in text, name
