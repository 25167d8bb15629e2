"""vLLM for real, on CPU: Ray Serve LLM's server in a local Ray, behind the fleet endpoint.

The fleet (see ``vllm_fleet.py``) has the project's tiny Hugging Face Llama under vLLM's CPU
build, two llama.cpp models and one simulated model, spoken to with the official ``openai``
client. Its tokens are vLLM's: the ``x-shoal-model`` header names the vLLM model, and the
prompt token counts in ``usage`` are those of the tiny model's own tokenizer (the llama.cpp
models tokenize differently). What vLLM itself supports (JSON-schema output, logprobs) is
also checked on Ray Serve LLM's server directly, through its handle with the request object
it takes, independently of the ingress.

vLLM loads in one to two minutes on two cores: one fleet for the module, shared by its tests.
``test_vllm_gpu.py`` runs these same tests with a real model where a GPU is.
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
from vllm_fleet import (
    LLAMA_MODELS,
    REPLIES,
    TINY_MAX_MODEL_LEN,
    VllmFleet,
    deploy,
    fleet_args,
    offline_hub,
    require_vllm,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["offline_hub"]  # a fixture this module uses

MESSAGES = [{"role": "user", "content": "Say hello to the fleet."}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
}


@pytest.fixture(scope="module")
def fleet(
    offline_hub: None, local_ray: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmFleet]:
    require_vllm()
    from shoal.serving.tinyhf import TinyHFModelSpec, ensure_tiny_hf_model

    model = ensure_tiny_hf_model(TinyHFModelSpec(max_position_embeddings=TINY_MAX_MODEL_LEN))
    vllm_model = {
        "engine": "vllm",
        "source": f"file://{model}",
        "resources": {"cpu": "1"},
        "engineArgs": {"dtype": "float32", "max_model_len": TINY_MAX_MODEL_LEN,
                       "enforce_eager": True},
    }  # fmt: skip
    args = fleet_args(vllm_model, tmp_path_factory.mktemp("vllm-fleet"), str(model))
    yield from deploy(local_ray, args, str(model))


@pytest.fixture()
def client(fleet: VllmFleet) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{fleet.base_url}/v1", api_key="unused", max_retries=0)


def _tokenizer(fleet: VllmFleet) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fleet.tokenizer_path)


def chat_prompt_tokens(fleet: VllmFleet, messages: list[dict[str, str]]) -> int:
    """Prompt tokens of a chat request as vLLM counts them (template, then no added BOS)."""
    tok = _tokenizer(fleet)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def completion_prompt_tokens(fleet: VllmFleet, prompt: str) -> int:
    tok = _tokenizer(fleet)
    return len(tok(prompt)["input_ids"])


def test_chat_through_auto_is_answered_by_vllm(client: Any, fleet: VllmFleet) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, max_tokens=12, temperature=0
    )
    assert raw.headers["x-shoal-model"] == fleet.vllm_model
    chat = raw.parse()
    assert chat.model == fleet.vllm_model
    assert chat.usage.prompt_tokens == chat_prompt_tokens(fleet, MESSAGES)
    assert 0 < chat.usage.completion_tokens <= 12
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.choices[0].message.content not in REPLIES.values()


def test_chat_streamed_by_name_matches_unstreamed(client: Any, fleet: VllmFleet) -> None:
    once = client.chat.completions.create(
        model=fleet.vllm_model, messages=MESSAGES, max_tokens=12, temperature=0
    )
    stream = client.chat.completions.with_raw_response.create(
        model=fleet.vllm_model, messages=MESSAGES, max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    assert stream.headers["x-shoal-model"] == fleet.vllm_model
    chunks = list(stream.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Greedy decoding: the same tokens streamed or not.
    assert text == once.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == chat_prompt_tokens(fleet, MESSAGES)
    assert usage.completion_tokens == once.usage.completion_tokens


def test_completions_both_ways(client: Any, fleet: VllmFleet) -> None:
    prompt = "The capital of France is"
    raw = client.completions.with_raw_response.create(
        model=fleet.vllm_model, prompt=prompt, max_tokens=6, temperature=0
    )
    assert raw.headers["x-shoal-model"] == fleet.vllm_model
    done = raw.parse()
    assert done.usage.prompt_tokens == completion_prompt_tokens(fleet, prompt)
    assert 0 < done.usage.completion_tokens <= 6
    parts = list(
        client.completions.create(
            model="auto", prompt=prompt, max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in parts) == done.choices[0].text


def test_json_schema_output_through_the_fleet(client: Any, fleet: VllmFleet) -> None:
    import jsonschema

    chat = client.chat.completions.create(
        model=fleet.vllm_model, messages=[{"role": "user", "content": "Weather in Paris?"}],
        max_tokens=64, seed=1, response_format=RESPONSE_FORMAT,
    )  # fmt: skip
    jsonschema.validate(json.loads(chat.choices[0].message.content), SCHEMA)


def test_logprobs_through_the_fleet(client: Any, fleet: VllmFleet) -> None:
    chat = client.chat.completions.create(
        model=fleet.vllm_model, messages=MESSAGES, max_tokens=4, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 2 for t in content)


# --- Ray Serve LLM's server itself, through its handle ------------------------------------


async def _collect(fleet: VllmFleet, method: str, request: Any) -> list[Any]:
    from ray import serve

    handle = serve.get_deployment_handle(fleet.deployment, app_name=fleet.app)
    out: list[Any] = []
    async for item in handle.options(method_name=method, stream=True).remote(request):
        out.extend(item if isinstance(item, list) else [item])
    return out


def _unary(items: list[Any]) -> dict[str, Any]:
    """The one response of a non-streamed call, as a dict (an error response fails)."""
    assert len(items) == 1, items
    data: dict[str, Any] = items[0].model_dump()
    assert "error" not in data or not data["error"], data
    return data


def test_llm_server_json_schema_output(fleet: VllmFleet) -> None:
    import jsonschema
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    request = ChatCompletionRequest(
        model=fleet.vllm_model, messages=[{"role": "user", "content": "Weather in Paris?"}],
        max_tokens=64, seed=1, stream=False, response_format=RESPONSE_FORMAT,
    )  # fmt: skip
    data = _unary(asyncio.run(_collect(fleet, "chat", request)))
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_llm_server_logprobs(fleet: VllmFleet) -> None:
    from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

    chat = ChatCompletionRequest(
        model=fleet.vllm_model, messages=MESSAGES, max_tokens=4, stream=False,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = _unary(asyncio.run(_collect(fleet, "chat", chat)))["choices"][0]["logprobs"][
        "content"
    ]
    assert len(content) == 4
    for token in content:
        assert token["logprob"] <= 0 and len(token["top_logprobs"]) == 2
    done = CompletionRequest(
        model=fleet.vllm_model, prompt="Once upon a time", max_tokens=3, stream=False, logprobs=2
    )
    logprobs = _unary(asyncio.run(_collect(fleet, "completions", done)))["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 3 and all(len(t) >= 2 for t in logprobs["top_logprobs"])


# --- what vLLM is asked: an unstreamed request stays unstreamed -----------------------------


def _requests_seen(fleet: VllmFleet) -> list[tuple[str, bool]]:
    from ray import serve

    handle = serve.get_deployment_handle(fleet.deployment, app_name=fleet.app)

    async def ask() -> list[tuple[str, bool]]:
        return [tuple(x) for x in await handle.options(method_name="requests_seen").remote()]  # type: ignore[misc]

    return asyncio.run(ask())


def test_an_unstreamed_request_reaches_vllm_unstreamed(client: Any, fleet: VllmFleet) -> None:
    before = len(_requests_seen(fleet))
    chat = client.chat.completions.create(
        model="auto", messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert chat.id.startswith("chatcmpl-") and chat.usage.completion_tokens > 0
    done = client.completions.create(model=fleet.vllm_model, prompt="Once", max_tokens=4)
    assert done.choices[0].text is not None
    streamed = list(
        client.chat.completions.create(
            model=fleet.vllm_model, messages=MESSAGES, max_tokens=4, stream=True
        )
    )
    assert streamed
    # Probes call check_health, not chat: every request here is one of the three above.
    assert _requests_seen(fleet)[before:] == [
        ("chat", False),
        ("completions", False),
        ("chat", True),
    ]


def test_an_unstreamed_answer_carries_the_fleets_signed_id(client: Any, fleet: VllmFleet) -> None:
    chat = client.chat.completions.create(
        model=fleet.vllm_model, messages=MESSAGES, max_tokens=4, temperature=0
    )
    # The id the feedback endpoint accepts: the fleet's, not vLLM's own.
    r = httpx.post(f"{fleet.base_url}/v1/feedback", json={"id": chat.id, "score": 1.0}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == fleet.vllm_model


# --- a vLLM replica killed under load (last: its replacement takes minutes to load) -------


async def _load(base_url: str, callers: int, seconds: float, on_tick: Any) -> list[Any]:
    """``callers`` concurrent clients sending chats back to back for ``seconds`` (unstreamed:
    an answer cut off by the kill is retried on the next model, as the client never saw it)."""
    body = {"model": "auto", "messages": MESSAGES, "max_tokens": 16}
    results: list[tuple[int, str | None, str]] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:

        async def caller() -> None:
            while time.monotonic() < deadline:
                try:
                    r = await http.post("/v1/chat/completions", json=body)
                    results.append((r.status_code, r.headers.get("x-shoal-model"), r.text[:300]))
                except httpx.HTTPError as exc:
                    results.append((0, None, repr(exc)))

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await on_tick(results)
        await asyncio.gather(*tasks)
    return results


def test_killing_the_vllm_replica_under_load_loses_no_request(fleet: VllmFleet) -> None:
    kill_vllm_under_load(fleet)


def kill_vllm_under_load(fleet: VllmFleet) -> None:
    """Kill the vLLM replica once it answers under load: every request is still answered."""
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    victims = [
        n["name"] for n in names
        if n["namespace"] == "serve" and f"#{fleet.deployment}#" in n["name"]
    ]  # fmt: skip
    assert len(victims) == 1, victims

    async def kill_once_vllm_answers(results: list[Any]) -> None:
        deadline = time.monotonic() + 60
        while not any(m == fleet.vllm_model for _, m, _ in results):
            assert time.monotonic() < deadline, f"vLLM never answered under load: {results[:3]}"
            await asyncio.sleep(0.1)
        ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)

    results = asyncio.run(
        _load(fleet.base_url, callers=4, seconds=20, on_tick=kill_once_vllm_answers)
    )
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    models = [m for _, m, _ in results]
    assert models.count(fleet.vllm_model) > 0
    # After the kill, the next model of the ranking answers (a capable one: a real engine).
    assert models.count(LLAMA_MODELS[0]) > 0, models
    assert set(models) <= {fleet.vllm_model, *LLAMA_MODELS}, models


def test_tiny_model_files_are_cached(fleet: VllmFleet) -> None:
    path = Path(fleet.tokenizer_path)
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
