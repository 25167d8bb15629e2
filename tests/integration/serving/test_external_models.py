"""Models served outside the fleet, for real: a real local Ray Serve runs a fleet (deployed from
its ``serveConfigV2`` entry, tenants in the ingress's ``user_config``, as KubeRay does) with
one llama.cpp model of its own and three ``engine: openai`` models that all point at a real
OpenAI-compatible server started here: llama-cpp-python's own server
(``python -m llama_cpp.server``) on a tiny generated GGUF, which requires an API key.

- ``big``: its key mounted (the file the operator mounts when the Secret is granted);
- ``wrongkey``: a key mounted, but not the server's (it answers 401);
- ``nokey``: its Secret not granted, so no key file: the ingress never calls the server.

A fitted one-cluster router ranks ``big`` first at alpha 1 and the fleet's own ``small``
first at alpha 0 (a tenant's maxAlpha 0). Callers use the official ``openai`` client.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.serving.conftest import free_port

from shoal.contract import (
    MODEL_KEYS_DIR_ENV,
    AccessConfig,
    BuildArgs,
    key_digest,
    model_deployment_name,
    serve_application,
)
from shoal.devtools.testing import require
from shoal.devtools.testing.node import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

openai = pytest.importorskip("openai", reason="the openai client is not installed")

FLEET = "hybrid"
SERVER_KEY = "sk-upstream-" + "u" * 40
WRONG_KEY = "sk-upstream-wrong-" + "w" * 40
KEYS = {name: f"sk-shoal-{name}-" + "k" * 40 for name in (
    "all", "cheap", "t401", "tnokey", "only401", "budget", "tok"
)}  # fmt: skip
FRONTIER_REPLY = "Frontier model answers here."
SMALL_REPLY = "Small model answers."
#: Price of the external models: high, so that a few requests reach a tenant's budget.
PRICE = {"inputPerMillion": "1000", "outputPerMillion": "5000"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now.",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["unit"],
        },
    },
}
ASK = [{"role": "user", "content": "question number 3 about things"}]


def small_gguf(folder: Path) -> Path:
    return folder / "hybrid-small.gguf"


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The external models' key files, as the operator mounts them, set before Ray starts
    (its workers inherit the variable): big's is right, wrongkey's wrong, nokey has none."""
    folder = tmp_path_factory.mktemp("model-keys")
    (folder / "big").write_text(SERVER_KEY + "\n")
    (folder / "wrongkey").write_text(WRONG_KEY + "\n")
    before = os.environ.get(MODEL_KEYS_DIR_ENV)
    os.environ[MODEL_KEYS_DIR_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(MODEL_KEYS_DIR_ENV, None)
    else:
        os.environ[MODEL_KEYS_DIR_ENV] = before


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI server on a tiny GGUF, with an API key: its base URL."""
    missing = [
        m
        for m in ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings")
        if importlib.util.find_spec(m) is None
    ]
    require(not missing, f"llama-cpp-python's server extras not installed: {', '.join(missing)}")
    from shoal.serving.tinymodel import TinyModelSpec, ensure_tiny_gguf

    gguf = ensure_tiny_gguf(
        TinyModelSpec(reply=FRONTIER_REPLY, name="hybrid-frontier"),
        tmp_path_factory.mktemp("frontier") / "frontier.gguf",
    )
    port = free_port()
    log = tmp_path_factory.mktemp("frontier-log") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
        "--port", str(port), "--api_key", SERVER_KEY, "--model_alias", "frontier",
        "--n_ctx", "512", "--n_threads", "1",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                r = httpx.get(
                    f"{base}/models", headers={"authorization": f"Bearer {SERVER_KEY}"}, timeout=2
                )
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def external(base_url: str, secret: str) -> dict[str, Any]:
    return {
        "engine": "openai",
        "tier": "frontier",
        "external": {
            "baseUrl": base_url,
            "model": "frontier",
            "apiKeySecretRef": {"name": secret, "key": "token"},
            "price": PRICE,
            "connectTimeoutSeconds": 2,
            "firstTokenTimeoutSeconds": 20,
            "requestTimeoutSeconds": 60,
        },
    }


def artifact(path: Path) -> str:
    """One cluster: at alpha 1 big, wrongkey, nokey, small (by quality); at alpha 0 small
    first (the cheapest)."""
    from shoal.routing import Sample, fit_router
    from shoal.routing.embedders.hashing import HashingEmbedder

    scores = {"big": 1.0, "wrongkey": 0.9, "nokey": 0.8, "small": 0.3}
    costs = {"big": 1.0, "wrongkey": 1.0, "nokey": 1.0, "small": 0.01}
    samples = [
        Sample(prompt=f"question number {i} about things", task="qa", scores=scores, costs=costs)
        for i in range(8)
    ]
    path.write_bytes(
        fit_router(samples, embedder=HashingEmbedder(256), clusters=1, top_p=1, alpha=1.0)
    )
    return str(path)


def fleet_args(base_url: str, artifact_path: str, models_dir: Path) -> BuildArgs:
    return BuildArgs.parse({
        "fleet_name": FLEET,
        "fleet": {
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.36"},
                      {"name": "frontier", "costPerReplicaHour": "0"}],
            "models": [
                {"name": "small", "engine": "llamacpp", "tier": "small",
                 "source": f"file://{models_dir}/hybrid-small.gguf",
                 "minReplicas": 1, "maxReplicas": 1, "resources": {"cpu": "500m"}},
                {"name": "big", **external(base_url, "frontier-key")},
                {"name": "wrongkey", **external(base_url, "wrong-key")},
                {"name": "nokey", **external(base_url, "unmarked-key")},
            ],
            "savings": {"referenceModel": "big"},
        },
        "policy": {"strategy": "cluster", "clusters": 1, "topP": 1, "alpha": "1.0",
                   "calibration": {"configMapRef": {"name": "cal", "key": "k"}}},
        "router_artifact_path": artifact_path,
        "limits": {"first_token_timeout_seconds": 8, "unhealthy_cooldown_seconds": 30},
    })  # fmt: skip


def access() -> AccessConfig:
    def tenant(name: str, **spec: Any) -> dict[str, Any]:
        return {"name": name, "key_digests": [key_digest(KEYS[name])], **spec}

    return AccessConfig.model_validate({
        "mode": "tenants",
        "sync_interval_seconds": 0.2,
        "tenants": [
            tenant("all"),
            tenant("cheap", max_alpha=0.0, models=["small", "big"]),
            tenant("t401", models=["wrongkey", "small"]),
            tenant("tnokey", models=["nokey", "small"]),
            tenant("only401", models=["wrongkey"]),
            # About $0.03-0.06 a request at these prices: the budget holds a few.
            tenant("budget", models=["big"], max_cost_per_hour="0.10",
                   budget_soft_percent=100),
            tenant("tok", models=["big"], limits={"tokens_per_minute": 120}),
        ],
    })  # fmt: skip


def wait_running(timeout: float = 240) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        apps = serve.status().applications
        state = apps[FLEET].status if FLEET in apps else None
        if state == "RUNNING":
            return
        if state == "DEPLOY_FAILED":
            pytest.fail(f"Serve application failed: {apps[FLEET].message}")
        time.sleep(0.5)
    pytest.fail(f"Serve application not RUNNING after {timeout}s (last: {state})")


@pytest.fixture(scope="module")
def fleet(
    keys_dir: Path, upstream: str, local_ray: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from shoal.serving.tinymodel import TinyModelSpec, ensure_tiny_gguf

    folder = tmp_path_factory.mktemp("hybrid")
    ensure_tiny_gguf(TinyModelSpec(reply=SMALL_REPLY, name="hybrid-small"), small_gguf(folder))
    args = fleet_args(upstream, artifact(folder / "router.bin"), folder)
    schema = ServeDeploySchema.model_validate({
        "http_options": {"host": "127.0.0.1", "port": local_ray.http_port},
        "applications": [serve_application(args, access())],
    })  # fmt: skip
    client = serve_api.serve_start(http_options=schema.http_options.model_dump())
    client.deploy_apps(schema, _blocking=False)
    wait_running()
    local_ray.folder = folder
    yield local_ray
    serve.delete(FLEET)


def client(fleet: Any, tenant: str) -> Any:
    return openai.OpenAI(
        base_url=f"{fleet.base_url}/v1", api_key=KEYS[tenant], max_retries=0, timeout=90
    )


def ask(fleet: Any, tenant: str, model: str = "auto", max_tokens: int = 16, **extra: Any) -> Any:
    return client(fleet, tenant).chat.completions.with_raw_response.create(
        model=model, max_tokens=max_tokens, messages=ASK, **extra
    )


def test_auto_routes_to_the_external_model_when_it_is_ranked_first(fleet: Any) -> None:
    raw = ask(fleet, "all")
    chat = raw.parse()
    assert raw.headers["x-shoal-model"] == "big"
    assert chat.choices[0].message.content == FRONTIER_REPLY
    assert chat.model == "big" and chat.id.startswith("chatcmpl-")
    assert chat.usage.completion_tokens > 0


def test_each_model_by_name(fleet: Any) -> None:
    raw = ask(fleet, "all", model="small")
    assert raw.headers["x-shoal-model"] == "small"
    assert raw.parse().choices[0].message.content == SMALL_REPLY
    raw = ask(fleet, "all", model="big")
    assert raw.parse().choices[0].message.content == FRONTIER_REPLY
    listed = {m.id: m.model_extra.get("shoal") for m in client(fleet, "all").models.list().data}
    assert listed["big"] == {"tier": "frontier", "engine": "openai"}


def test_streaming_passes_through(fleet: Any) -> None:
    stream = client(fleet, "all").chat.completions.create(
        model="big", max_tokens=16, messages=ASK, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    events = list(stream)
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == FRONTIER_REPLY
    assert len([e for e in events if e.choices and e.choices[0].delta.content]) > 1
    assert all(e.model == "big" for e in events)
    assert events[-1].usage is not None and events[-1].usage.completion_tokens > 0


def test_a_tool_call_passes_through(fleet: Any) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    raw = ask(fleet, "all", model="big", max_tokens=64, tools=[WEATHER_TOOL], tool_choice=choice)
    chat = raw.parse()
    assert raw.headers["x-shoal-model"] == "big"
    assert chat.choices[0].finish_reason == "tool_calls"
    call = chat.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["unit"] in ("celsius", "fahrenheit")


def test_a_401_from_the_endpoint_falls_back_and_alone_is_a_clear_error(fleet: Any) -> None:
    before = fleet.metric("ray_shoal_fallbacks_total", model="wrongkey")
    raw = ask(fleet, "t401")
    assert raw.headers["x-shoal-model"] == "small"
    assert raw.parse().choices[0].message.content == SMALL_REPLY
    assert fleet.wait_metric("ray_shoal_fallbacks_total", lambda v: v > before, model="wrongkey")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        ask(fleet, "only401", model="wrongkey")
    assert time.monotonic() - started < 30
    assert err.value.status_code == 503
    assert "last error: error" in err.value.message


def test_a_model_whose_key_was_not_granted_never_reaches_the_endpoint(fleet: Any) -> None:
    raw = ask(fleet, "tnokey")
    assert raw.headers["x-shoal-model"] == "small"
    assert raw.parse().choices[0].message.content == SMALL_REPLY


def _answers_by_name(fleet: Any, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    auth = {"authorization": f"Bearer {KEYS['all']}"}
    try:
        r = httpx.post(f"{fleet.base_url}/v1/chat/completions", json=body, headers=auth, timeout=30)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def test_calibrate_prices_the_external_model_per_token(fleet: Any, tmp_path: Path) -> None:
    """``shoal calibrate`` against the hybrid fleet: the external model is called through the
    fleet like its own, graded, and priced per token at its ``external.price`` (the fleet's
    own model per replica-hour); a router fitted on the file ranks the frontier first where
    only it answers right."""
    import yaml

    from shoal.routing import load_calibration

    spec = fleet_args("http://unused.invalid/v1", "unused", fleet.folder).fleet
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelFleet",
        "metadata": {"name": FLEET, "namespace": "default"},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }))  # fmt: skip
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": f"question number {i} about things", "task": "qa", "grader": "regex",
         "reference": "^Frontier model"}
        for i in range(3)
    ]  # fmt: skip
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "calibration.jsonl"
    # The tests before this one make ``big`` fail on purpose: calibrate once its health
    # cooldown is over (it answers by name again), or one of its calls is refused with a 503.
    wait_until("big answering by name", lambda: _answers_by_name(fleet, "big"), 120, 0.5)
    run = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "calibrate", "--endpoint", f"{fleet.base_url}/v1",
         "--fleet", str(fleet_file), "--models", "small,big", "--prompts", str(prompts),
         "--out", str(out), "--concurrency", "2", "--max-tokens", "16"],
        env={**os.environ, "SHOAL_API_KEY": KEYS["all"]},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert (last["prompts"], last["failed_calls"], last["models"]) == (3, 0, ["small", "big"])
    samples = load_calibration([out])
    assert [s.scores for s in samples] == [{"small": 0.0, "big": 1.0}] * 3
    calls = [json.loads(line) for line in out.with_name(out.name + ".calls.jsonl").open()]
    big = [c for c in calls if c.get("model") == "big"]
    assert len(big) == 3 and all(c["completion_tokens"] > 0 for c in big), big
    for c in big:  # USD per token at the external model's price, not per replica-hour
        expected = (c["prompt_tokens"] * 1000 + c["completion_tokens"] * 5000) / 1e6
        assert c["cost"] == pytest.approx(expected, rel=1e-6), c
    for s in samples:
        assert s.costs["big"] > 100 * s.costs["small"] > 0, s.costs


def test_the_external_model_takes_over_when_the_fleets_own_model_is_down(fleet: Any) -> None:
    """The fleet's own model goes down for good: its replica is killed and its weights are
    gone, so Ray Serve cannot bring it back. Requests ranked to it are answered by the
    frontier model: the first after the ingress's first-token limit, the rest at once
    (the model is in cooldown)."""
    import ray

    raw = ask(fleet, "cheap")  # alpha 0: small, the fleet's own, ranked first
    assert raw.headers["x-shoal-model"] == "small"
    victims = [
        n["name"] for n in ray.util.list_named_actors(all_namespaces=True)
        if n["namespace"] == "serve" and f"#{model_deployment_name('small')}#" in n["name"]
    ]  # fmt: skip
    assert len(victims) == 1, victims
    small_gguf(fleet.folder).unlink()
    ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
    before = fleet.metric("ray_shoal_fallbacks_total", model="small")
    answered = []
    for _ in range(3):
        started = time.monotonic()
        raw = ask(fleet, "cheap")
        answered.append((raw.headers["x-shoal-model"], round(time.monotonic() - started, 1)))
        assert raw.parse().choices[0].message.content == FRONTIER_REPLY, answered
    assert [m for m, _ in answered] == ["big"] * 3, answered
    assert all(seconds < 30 for _, seconds in answered), answered
    assert fleet.wait_metric("ray_shoal_fallbacks_total", lambda v: v > before, model="small")


def test_tenants_budgets_and_token_limits_count_the_external_models_dollars_and_tokens(
    fleet: Any,
) -> None:
    refused = None
    answered = 0
    for _ in range(12):
        try:
            ask(fleet, "budget")
            answered += 1
        except openai.RateLimitError as err:
            refused = err
            break
    assert refused is not None and 1 <= answered <= 6, answered
    assert "budget" in refused.message.lower()
    spent = fleet.wait_metric(
        "ray_shoal_tenant_cost_usd_total", lambda v: v > 0.05, tenant="budget"
    )
    tokens = fleet.wait_metric("ray_shoal_tenant_tokens_total", lambda v: v > 0, tenant="budget")
    # Every dollar is the endpoint's tokens at its price (at least $1,000 per million).
    assert spent >= tokens * 1000 / 1e6 * 0.99

    # big is its own reference: what the tokens would have cost there is what they cost
    # (read once both series exported the same requests).
    def same() -> bool:
        spent = fleet.metric("ray_shoal_tenant_cost_usd_total", tenant="budget")
        ref = fleet.metric("ray_shoal_tenant_reference_cost_usd_total", tenant="budget")
        return spent > 0 and abs(ref - spent) <= 0.01 * spent

    deadline = time.monotonic() + 30
    while not same() and time.monotonic() < deadline:
        time.sleep(1.0)
    assert same()
    limited = None
    for _ in range(12):
        try:
            ask(fleet, "tok")
        except openai.RateLimitError as err:
            limited = err
            break
    assert limited is not None, "the token limit never bound"


def test_the_key_is_in_no_log_and_no_metric(fleet: Any) -> None:
    ask(fleet, "all", model="big")
    assert SERVER_KEY not in fleet.scrape() and WRONG_KEY not in fleet.scrape()
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 64 * 1024 * 1024:
            data = path.read_bytes()
            assert SERVER_KEY.encode() not in data, path
            assert WRONG_KEY.encode() not in data, path
