"""Tenants at the fleet endpoint, for real: keys, limits, budgets, rotation, two replicas.

A real local Ray Serve runs the fleet from its ``serveConfigV2`` application entry as the
operator renders it (:func:`shoal.contract.serve_application`, the tenants' access config in
the ingress's ``user_config``), deployed through Ray Serve's deploy-config API as KubeRay
does. Two ingress replicas share one usage store actor. The models are simulated engines in
two tiers of different price, routed by a fitted cluster router whose choice depends on alpha.
Callers use the official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.contract import (
    INGRESS_DEPLOYMENT,
    AccessConfig,
    BuildArgs,
    key_digest,
    serve_application,
)
from shoal.serving.usage import STORE_NAMESPACE, store_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

openai = pytest.importorskip("openai", reason="the openai client is not installed")

FLEET = "tenants"
KEYS = {name: f"sk-shoal-{name}-" + "k" * 40 for name in (
    "alpha", "beta", "tok", "budget", "wide", "rot", "guarded"
)}  # fmt: skip
ROTATED = "sk-shoal-rot-rotated-" + "r" * 40
WRONG = "sk-shoal-nobody-" + "w" * 40


def tenant(name: str, key: str | None = None, **spec: Any) -> dict[str, Any]:
    return {"name": name, "key_digests": [key_digest(key or KEYS[name])], **spec}


def access(rot_key: str = KEYS["rot"], **extra: Any) -> AccessConfig:
    return AccessConfig.model_validate({
        "mode": "tenants",
        "sync_interval_seconds": 0.2,
        "tenants": [
            tenant("alpha", limits={"requests_per_minute": 5}),
            tenant("beta"),
            tenant("tok", limits={"tokens_per_minute": 300}),
            tenant("budget", max_cost_per_hour="0.02", budget_soft_percent=50, min_alpha=0),
            tenant("wide", limits={"requests_per_minute": 60}),
            tenant("rot", key=rot_key),
            tenant("guarded", limits={"requests_per_minute": 1000}),
        ],
        **extra,
    })  # fmt: skip


def artifact(path: Path) -> str:
    """A fitted one-cluster router: ``big`` is better, ``small`` cheaper; alpha above 0.5
    ranks big first, below it small."""
    from shoal.routing import Sample, fit_router
    from shoal.routing.embedders.hashing import HashingEmbedder

    samples = [
        Sample(prompt=f"question number {i} about things", task="qa",
               scores={"big": 1.0, "small": 0.5}, costs={"big": 1.0, "small": 0.1})
        for i in range(8)
    ]  # fmt: skip
    data = fit_router(samples, embedder=HashingEmbedder(256), clusters=1, top_p=1, alpha=1.0)
    path.write_bytes(data)
    return str(path)


def fleet_args(artifact_path: str) -> BuildArgs:
    one = {"minReplicas": 1, "maxReplicas": 1, "resources": {"cpu": "100m"}}
    sim = {"fixed_step_ms": 10, "output_tokens": 12}
    return BuildArgs.parse({
        "fleet_name": FLEET,
        "fleet": {
            "routingPolicyRef": {"name": "p"},
            "tiers": [
                {"name": "large", "costPerReplicaHour": "36.00"},
                {"name": "small", "costPerReplicaHour": "9.00"},
            ],
            "models": [
                {"name": "big", "engine": "simulated", "tier": "large", **one, "engineArgs": sim},
                {"name": "small", "engine": "simulated", "tier": "small", **one,
                 "engineArgs": sim},
            ],
        },
        "policy": {"strategy": "cluster", "clusters": 1, "topP": 1, "alpha": "1.0",
                   "calibration": {"configMapRef": {"name": "cal", "key": "k"}}},
        "router_artifact_path": artifact_path,
        "ingress": {"num_replicas": 2, "num_cpus": 0.1},
    })  # fmt: skip


def deploy(args: BuildArgs, config: AccessConfig, port: int) -> None:
    """What KubeRay does with serveConfigV2: Ray Serve's deploy-config API."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [serve_application(args, config)],
    })  # fmt: skip
    client = serve_api.serve_start(http_options=schema.http_options.model_dump())
    client.deploy_apps(schema, _blocking=False)


def wait_running(timeout: float = 180) -> None:
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


def ingress_replicas() -> dict[str, str]:
    """Name -> actor id of every ingress replica."""
    import ray

    out = {}
    for n in ray.util.list_named_actors(all_namespaces=True):
        if n["namespace"] == "serve" and f"#{INGRESS_DEPLOYMENT}#" in n["name"]:
            actor = ray.get_actor(n["name"], namespace="serve")
            out[n["name"]] = actor._actor_id.hex()
    return out


@pytest.fixture(scope="module")
def fleet(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ray import serve

    args = fleet_args(artifact(tmp_path_factory.mktemp("router") / "router.bin"))
    deploy(args, access(), local_ray.http_port)
    wait_running()
    local_ray.args = args
    yield local_ray
    serve.delete(FLEET)


def _no_key(request: httpx.Request) -> None:
    del request.headers["authorization"]


def client(fleet: Any, key: str | None) -> Any:
    """The official client; ``key`` None: one that sends no Authorization header at all
    (the client insists on a key, so its header is removed on the way out)."""
    http = httpx.Client(event_hooks={"request": [_no_key]}) if key is None else None
    return openai.OpenAI(
        base_url=f"{fleet.base_url}/v1",
        api_key=key or "unused",
        max_retries=0,
        timeout=60,
        http_client=http,
    )


def chat(fleet: Any, key: str | None, content: str = "question number 3 about things") -> Any:
    """The raw response of one chat completion (``openai`` raises on errors)."""
    return client(fleet, key).chat.completions.with_raw_response.create(
        model="auto", max_tokens=12, messages=[{"role": "user", "content": content}]
    )


def post(fleet: Any, key: str | None, model: str = "auto") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{fleet.base_url}/v1/chat/completions", headers=headers, timeout=60, json={
        "model": model, "max_tokens": 12,
        "messages": [{"role": "user", "content": "question number 3 about things"}],
    })  # fmt: skip


def test_keys_no_key_and_wrong_key_are_401_right_key_is_200(fleet: Any) -> None:
    for key in (None, WRONG):
        with pytest.raises(openai.AuthenticationError) as err:
            chat(fleet, key)
        assert err.value.status_code == 401
        assert err.value.code == "invalid_api_key"
        assert err.value.body["type"] == "invalid_request_error"
    assert post(fleet, None).status_code == 401  # no Authorization header at all
    with pytest.raises(openai.AuthenticationError):
        client(fleet, WRONG).models.list()
    raw = chat(fleet, KEYS["beta"])
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-shoal-model"] == "big"  # alpha 1: the better model
    assert httpx.get(f"{fleet.base_url}/healthz", timeout=30).status_code == 200  # no key


def test_a_tenant_over_its_request_rate_gets_429_while_another_is_served(fleet: Any) -> None:
    answered = []
    refused: Any = None
    for _ in range(30):  # 5 per minute; the rest of this minute is refused
        try:
            raw = chat(fleet, KEYS["alpha"])
            answered.append(raw.headers)
        except openai.RateLimitError as err:
            refused = err
            break
    assert refused is not None, "tenant alpha was never limited"
    seen = [h.get("x-ratelimit-remaining-requests") for h in answered]
    assert 4 <= len(answered) <= 6, (seen, refused.body, dict(refused.response.headers))
    assert answered[0]["x-ratelimit-limit-requests"] == "5"
    assert int(answered[0]["x-ratelimit-remaining-requests"]) >= 3
    h = refused.response.headers
    assert refused.status_code == 429 and refused.code == "rate_limit_exceeded"
    assert h["x-ratelimit-limit-requests"] == "5"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"].endswith("s")
    assert 1 <= int(h["retry-after"]) <= 60
    # tenant beta is served all the while
    assert chat(fleet, KEYS["beta"]).http_response.status_code == 200


def test_tokens_per_minute_are_enforced(fleet: Any) -> None:
    used = 0
    refused: Any = None
    for _ in range(60):
        try:
            raw = chat(fleet, KEYS["tok"])
        except openai.RateLimitError as err:
            refused = err
            break
        usage = raw.parse().usage
        used += usage.prompt_tokens + usage.completion_tokens
        assert raw.headers["x-ratelimit-limit-tokens"] == "300"
    assert refused is not None, "tokens per minute were never enforced"
    assert refused.response.headers["x-ratelimit-limit-tokens"] == "300"
    assert refused.response.headers["x-ratelimit-reset-tokens"]
    assert refused.body["type"] == "tokens"
    assert 300 - 40 <= used <= 300 + 40  # one request's worth of tokens around the limit


def test_a_tenant_nearing_its_budget_is_routed_cheaper_then_refused(fleet: Any) -> None:
    models: list[str] = []
    alphas: list[float] = []
    refused: Any = None
    # a big answer costs about a tenth of the budget, a small one a quarter of that
    for _ in range(200):
        try:
            raw = chat(fleet, KEYS["budget"])
        except openai.RateLimitError as err:
            refused = err
            break
        models.append(raw.headers["x-shoal-model"])
        alphas.append(float(raw.headers["x-shoal-alpha"]))
    assert refused is not None, f"the budget was never enforced: {models}"
    assert models[0] == "big" and "small" in models, models
    assert alphas[0] == 1.0 and min(alphas) < 0.5, alphas
    assert refused.status_code == 429 and refused.code == "insufficient_quota"
    assert refused.body["type"] == "insufficient_quota"
    assert int(refused.response.headers["retry-after"]) >= 1


def test_a_named_model_the_tenant_may_not_use_is_not_found(fleet: Any, tmp_path: Path) -> None:
    limited = access()
    limited.tenants[1] = limited.tenants[1].model_copy(update={"models": ["small"]})
    deploy(fleet.args, limited, fleet.http_port)
    wait_running()
    deadline = time.monotonic() + 60
    while post(fleet, KEYS["beta"], "big").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.5)
    resp = post(fleet, KEYS["beta"], "big")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    auto = post(fleet, KEYS["beta"])
    assert auto.status_code == 200 and auto.headers["x-shoal-model"] == "small"
    listed = {m.id for m in client(fleet, KEYS["beta"]).models.list()}
    assert "big" not in listed and "small" in listed
    deploy(fleet.args, access(), fleet.http_port)
    wait_running()


def test_a_rotated_key_is_honoured_without_restarting_the_ingress(fleet: Any) -> None:
    assert chat(fleet, KEYS["rot"]).http_response.status_code == 200
    before = ingress_replicas()
    assert len(before) == 2
    deploy(fleet.args, access(rot_key=ROTATED), fleet.http_port)
    deadline = time.monotonic() + 30  # the issue's bound on a rotation
    new_ok = False
    while time.monotonic() < deadline and not new_ok:
        new_ok = post(fleet, ROTATED).status_code == 200
        if not new_ok:
            time.sleep(0.2)
    assert new_ok, "the rotated key was not accepted within 30 s"
    wait_running()
    # every replica has the new config: the old key is refused by all of them
    assert all(post(fleet, KEYS["rot"]).status_code == 401 for _ in range(6))
    assert all(post(fleet, ROTATED).status_code == 200 for _ in range(4))
    assert ingress_replicas() == before  # the same replicas: updated in place


def test_limits_hold_across_two_ingress_replicas(fleet: Any) -> None:
    assert len(ingress_replicas()) == 2

    async def burst() -> list[int]:
        headers = {"authorization": f"Bearer {KEYS['wide']}"}
        body = {"model": "auto", "max_tokens": 4,
                "messages": [{"role": "user", "content": "question number 1 about things"}]}  # fmt: skip
        sem = asyncio.Semaphore(24)
        async with httpx.AsyncClient(base_url=fleet.base_url, timeout=60) as http:

            async def one() -> int:
                async with sem:
                    r = await http.post("/v1/chat/completions", json=body, headers=headers)
                    return r.status_code

            return list(await asyncio.gather(*(one() for _ in range(180))))

    codes = asyncio.run(burst())
    admitted = codes.count(200)
    assert set(codes) <= {200, 429}, codes
    assert 54 <= admitted <= 66, f"{admitted} admitted against a limit of 60"


def test_store_down_acts_as_configured(fleet: Any) -> None:
    """``store_failure_mode: closed``: while the usage store is gone, a limited tenant gets
    503 and an unlimited one is served; the replicas re-create the store and serve again."""
    import ray

    deploy(fleet.args, access(store_failure_mode="closed"), fleet.http_port)
    wait_running()
    deadline = time.monotonic() + 30
    while post(fleet, KEYS["guarded"]).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    name = store_name(FLEET, fleet.args.namespace)
    ray.kill(ray.get_actor(name, namespace=STORE_NAMESPACE), no_restart=True)
    deadline = time.monotonic() + 8  # well before the replicas re-create it (10 s)
    codes: list[int] = []
    while time.monotonic() < deadline:
        codes.append(post(fleet, KEYS["guarded"]).status_code)
        if codes.count(503) >= 2:
            break
        time.sleep(0.1)
    assert 503 in codes, codes
    refused = post(fleet, KEYS["guarded"])
    if refused.status_code == 503:
        assert refused.json()["error"]["code"] == "rate_limit_unavailable"
        assert refused.headers["retry-after"] == "1"
    assert post(fleet, KEYS["beta"]).status_code == 200  # no limits: served anyway
    deadline = time.monotonic() + 60
    while post(fleet, KEYS["guarded"]).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert post(fleet, KEYS["guarded"]).status_code == 200
    deploy(fleet.args, access(), fleet.http_port)
    wait_running()


def test_tenant_series_are_exported_and_no_key_is_in_any_log_or_metric(fleet: Any) -> None:
    value = fleet.wait_metric(
        "ray_shoal_tenant_requests_total", lambda v: v > 0, tenant="beta", model="big", code="200"
    )
    assert value > 0
    assert (
        fleet.wait_metric(
            "ray_shoal_tenant_rejections_total", lambda v: v > 0, tenant="alpha", reason="requests"
        )
        > 0
    )
    assert (
        fleet.wait_metric("ray_shoal_tenant_cost_usd_total", lambda v: v > 0, tenant="budget") > 0
    )
    assert (
        fleet.wait_metric(
            "ray_shoal_tenant_tokens_total", lambda v: v > 0, tenant="tok", kind="completion"
        )
        > 0
    )
    from prometheus_client.parser import text_string_to_metric_families

    scrape = fleet.scrape()
    tenants = {
        s.labels["tenant"]
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if "tenant" in s.labels
    }
    assert tenants and tenants <= set(KEYS)  # only declared tenants' names
    secrets = [*KEYS.values(), ROTATED, WRONG]
    assert not [k for k in secrets if k in scrape]
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = []
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files
    for path in files:
        text = path.read_bytes()
        leaked += [f"{path.name}: {k[:12]}..." for k in secrets if k.encode() in text]
    assert not leaked, leaked
