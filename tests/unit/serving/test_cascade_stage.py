"""The cascade stage in process: the Endpoint, the official ``openai`` client, and a fake
engine that answers with chosen log-probabilities and tool calls (named as a fake: the real
engines' path is tests/integration/serving/test_cascade.py, on Ray with llama.cpp)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.contract import AccessConfig, BuildArgs, key_digest
from shoal.routing.cascade_plan import CascadePlan
from shoal.serving.capabilities import OPENAI_CHAT
from shoal.serving.cascade import replay_events
from shoal.serving.clients import LocalModelClient, ModelInfo
from shoal.serving.engines.base import Chunk, EngineLoad, GenerationRequest
from shoal.serving.ingress import Endpoint
from shoal.serving.metrics import RouterMetrics

pytest.importorskip("starlette", reason="starlette (ray[serve]) not installed")
openai = pytest.importorskip("openai", reason="openai client not installed")

from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

KEY = "sk-team-" + "a" * 40
POOR = "sk-poor-" + "b" * 40
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}},
    "required": ["city"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}]


class FakeLogprobEngine:
    """Answers every chat with one body written as an OpenAI server would: ``logprob`` for
    each of its three tokens (when asked for log-probabilities), a tool call with
    ``arguments`` when the request has tools, after ``delay`` seconds."""

    def __init__(
        self,
        model: str,
        logprob: float,
        arguments: str = '{"city": "Paris"}',
        delay: float = 0,
        text: str | None = None,
    ) -> None:
        self.model = model
        self.logprob = logprob
        self.arguments = arguments
        self.delay = delay
        self.text = text or f"answer of {model}"
        self.requests: list[GenerationRequest] = []

    async def start(self) -> None:
        return None

    async def check_health(self) -> None:
        return None

    def load(self) -> EngineLoad:
        return EngineLoad(0, 0)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        finish = "stop"
        if request.params.get("tools"):
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": self.arguments}}]}  # fmt: skip
            finish = "tool_calls"
        top = int(request.params.get("top_logprobs") or 0)
        tokens = [
            {"token": "t", "logprob": self.logprob,
             "top_logprobs": [{"token": "t", "logprob": self.logprob},
                              {"token": "u", "logprob": self.logprob - 1.0}][:top]}
            for _ in range(3)
        ]  # fmt: skip
        body = {
            "id": request.request_id, "object": "chat.completion", "created": 1,
            "model": request.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": {"content": tokens} if request.params.get("logprobs")
                         else None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }  # fmt: skip
        if request.stream:
            yield Chunk(message["content"] or "", data=b"data: {}\n\n")
            yield Chunk("", finish, 10, 3, data=b"")  # type: ignore[arg-type]
            return
        yield Chunk(message["content"] or "", finish, 10, 3, data=json.dumps(body).encode())  # type: ignore[arg-type]


def endpoint(
    cascade: dict[str, Any] | None = None,
    cheap: float = -2.0,
    big: float = -0.1,
    cheap_args: str = '{"city": "Paris"}',
    cheap_delay: float = 0.0,
    artifact: str | None = None,
    texts: dict[str, str] | None = None,
    voter_delay: float = 0.0,
) -> tuple[Endpoint, dict[str, FakeLogprobEngine]]:
    """An endpoint over ``cheap`` and ``big`` (and ``voter``, in the small tier, when
    ``texts`` names it), fake engines that answer ``texts[model]``."""
    texts = texts or {}
    names = ["cheap", *(["voter"] if "voter" in texts else []), "big"]
    policy: dict[str, Any] = {"strategy": "static", "staticOrder": ["cheap", "big"]}
    extra: dict[str, Any] = {}
    if artifact is not None:
        policy = {"strategy": "cluster", "clusters": 2, "topP": 1, "alpha": "0.2",
                  "calibration": {"configMapRef": {"name": "c", "key": "k"}}}  # fmt: skip
        extra["router_artifact_path"] = artifact
    policy["cascade"] = {"threshold": "-1.0", **(cascade or {})}
    raw = {
        "fleet_name": "test",
        "fleet": {
            "routingPolicyRef": {"name": "p"},
            "tiers": [
                {"name": "small", "costPerReplicaHour": "1"},
                {"name": "large", "costPerReplicaHour": "10"},
            ],
            "models": [
                {"name": m, "engine": "simulated", "tier": "large" if m == "big" else "small"}
                for m in names
            ],
        },
        "policy": policy,
        **extra,
    }
    args = BuildArgs.parse(raw)
    engines = {
        "cheap": FakeLogprobEngine("cheap", cheap, cheap_args, cheap_delay, texts.get("cheap")),
        "big": FakeLogprobEngine("big", big, text=texts.get("big")),
    }
    if "voter" in texts:
        engines["voter"] = FakeLogprobEngine("voter", -1.0, delay=voter_delay, text=texts["voter"])
    clients = {
        name: LocalModelClient(
            ModelInfo(name, "large" if name == "big" else "small", "simulated",
                      10.0 if name == "big" else 1.0),
            engines[name],
        )
        for name in names
    }  # fmt: skip
    ep = Endpoint(args, clients, RouterMetrics("test", backend="prometheus"))  # type: ignore[arg-type]
    for name in engines:  # the fake gives log-probabilities, as llama.cpp and vLLM do
        ep.capabilities[name] = dataclasses.replace(
            ep.capabilities[name], chat_params=OPENAI_CHAT, tools=True, logprobs=True
        )
    return ep, engines


def serve(ep: Endpoint) -> TestClient:
    app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["GET", "POST"])])
    return TestClient(app)


def oa(tc: TestClient, key: str = "unused") -> Any:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=tc, max_retries=0
    )


def ask(client: Any, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], **kw
    )


def metric(ep: Endpoint, name: str, **labels: str) -> float:
    value = ep.metrics.registry.get_sample_value(name, {"fleet": "test", **labels})
    return 0.0 if value is None else float(value)


def test_a_doubtful_answer_escalates_and_usage_sums_both() -> None:
    ep, engines = endpoint(cheap=-2.0)
    with serve(ep) as tc:
        raw = ask(oa(tc))
    answer = raw.parse()
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big"
    assert raw.headers["x-shoal-cascade-escalated"] == "true"
    assert raw.headers["x-shoal-cascade-confidence"] == "-2.0000,-0.1000"
    assert raw.headers["x-shoal-cascade-threshold-source"] == "policy"
    assert raw.headers["x-shoal-model"] == "big"
    assert answer.choices[0].message.content == "answer of big"
    assert answer.choices[0].logprobs is None  # asked for by the cascade, not by the client
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (20, 6)
    assert engines["cheap"].requests[0].params["logprobs"] is True
    assert "top_logprobs" not in engines["cheap"].requests[0].params  # the mean needs none
    assert metric(ep, "shoal_cascade_attempts_total", model="cheap", outcome="escalated") == 1
    assert metric(ep, "shoal_cascade_attempts_total", model="big", outcome="accepted") == 1
    for model in ("cheap", "big"):
        tier = "small" if model == "cheap" else "large"
        labels = {"model": model, "tier": tier, "api": "chat", "code": "200"}
        assert metric(ep, "shoal_requests_total", **labels) == 1


def test_a_confident_answer_is_kept_and_the_client_gets_what_it_asked() -> None:
    ep, engines = endpoint(cheap=-0.2, cascade={"signal": "LogprobMargin", "threshold": "0.5"})
    with serve(ep) as tc:
        raw = ask(oa(tc), logprobs=True, top_logprobs=1)
    answer = raw.parse()
    assert raw.headers["x-shoal-cascade-models"] == "cheap"
    assert raw.headers["x-shoal-cascade-escalated"] == "false"
    assert raw.headers["x-shoal-cascade-confidence"] == "1.0000"  # the margin
    assert raw.headers["x-shoal-model"] == "cheap"
    assert engines["big"].requests == []
    assert engines["cheap"].requests[0].params["top_logprobs"] == 2  # the margin's two
    tokens = answer.choices[0].logprobs.content
    assert len(tokens) == 3 and all(len(t.top_logprobs) == 1 for t in tokens)  # as asked
    assert answer.usage.completion_tokens == 3


def test_a_tool_call_off_its_parameters_escalates() -> None:
    ep, _ = endpoint(cheap=-0.01, cheap_args='{"city": "Llanfairpwllgwyngyll"}')
    with serve(ep) as tc:
        raw = ask(oa(tc), tools=TOOLS, tool_choice="required")
    answer = raw.parse()
    assert raw.headers["x-shoal-cascade-confidence"] == "invalid,-0.1000"
    assert raw.headers["x-shoal-model"] == "big"
    assert json.loads(answer.choices[0].message.tool_calls[0].function.arguments) == {
        "city": "Paris"
    }


def test_streaming_replays_the_verified_answer_or_streams_the_first_model() -> None:
    ep, _ = endpoint(cheap=-3.0)
    with serve(ep) as tc:
        raw = ask(oa(tc), stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "answer of big"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 26
    ep, engines = endpoint(cheap=-3.0, cascade={"streaming": "FirstModel"})
    with serve(ep) as tc:
        raw = ask(oa(tc), stream=True)
        list(raw.parse())
    assert "x-shoal-cascade-models" not in raw.headers
    assert raw.headers["x-shoal-model"] == "cheap" and engines["big"].requests == []


def test_replayed_tool_calls_carry_their_index() -> None:
    body = {"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "finish_reason":
            "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip
    events = replay_events("chat", body, include_usage=False)
    first = json.loads(events[0][len(b"data: ") :])
    assert first["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert json.loads(events[1][len(b"data: ") :])["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1] == b"data: [DONE]\n\n" and len(events) == 3


def test_a_first_model_past_its_stage_deadline_is_passed_over() -> None:
    ep, _ = endpoint(cheap=-0.1, cheap_delay=2.0, cascade={"stageFirstTokenSeconds": "0.2"})
    with serve(ep) as tc:
        raw = ask(oa(tc))
    assert raw.headers["x-shoal-cascade-confidence"] == "failed,-0.1000"
    assert raw.headers["x-shoal-model"] == "big"
    assert metric(ep, "shoal_cascade_attempts_total", model="cheap", outcome="failed") == 1


def test_the_chain_deadline_keeps_the_answer_in_hand() -> None:
    ep, engines = endpoint(cheap=-3.0, cheap_delay=0.4, cascade={"chainTimeoutSeconds": "0.3",
                                                                "stageFirstTokenSeconds": "0.3"})  # fmt: skip
    with serve(ep) as tc, pytest.raises(openai.APIStatusError) as err:
        ask(oa(tc))
    assert err.value.status_code == 504  # nothing answered within the chain's deadline
    # The cheap answer comes after 0.3 s: less than one stage's 0.8 s is left of the chain's.
    ep, engines = endpoint(cheap=-3.0, cheap_delay=0.3, cascade={"chainTimeoutSeconds": "1",
                                                                "stageFirstTokenSeconds": "0.8"})  # fmt: skip
    with serve(ep) as tc:
        raw = ask(oa(tc))
    assert raw.headers["x-shoal-cascade-stopped"] == "deadline"
    assert raw.headers["x-shoal-model"] == "cheap" and engines["big"].requests == []


def test_the_cost_cap_stops_an_escalation() -> None:
    ep, engines = endpoint(cheap=-3.0, cascade={"maxCostPerRequest": "0.0001"})
    ep.book.cost_per_request["big"] = 0.01  # big's recent cost per request
    with serve(ep) as tc:
        raw = ask(oa(tc))
    assert raw.headers["x-shoal-cascade-stopped"] == "cost"
    assert raw.headers["x-shoal-model"] == "cheap" and engines["big"].requests == []
    assert metric(ep, "shoal_cascade_attempts_total", model="cheap", outcome="kept") == 1


def access() -> AccessConfig:
    return AccessConfig.model_validate({
        "mode": "tenants",
        "tenants": [
            {"name": "team", "key_digests": [key_digest(KEY)]},
            {"name": "poor", "key_digests": [key_digest(POOR)], "max_cost_per_hour": "0.001"},
        ],
    })  # fmt: skip


@pytest.mark.parametrize(("mode", "status"), [("ReturnCheapAnswer", 200), ("Refuse", 429)])
def test_a_tenant_without_budget_for_the_escalation(mode: str, status: int) -> None:
    ep, engines = endpoint(cheap=-3.0, cascade={"onBudgetExhausted": mode})
    ep.book.cost_per_request["big"] = 0.01  # more than the poor tenant has left
    with serve(ep) as tc:
        tc.portal.call(ep.configure_access, access())  # type: ignore[union-attr]
        raw = ask(oa(tc, KEY))  # a tenant with budget escalates
        assert raw.headers["x-shoal-model"] == "big"
        poor = tc.post("/v1/chat/completions", headers={"authorization": f"Bearer {POOR}"},
                       json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert poor.status_code == status
    assert poor.headers["x-shoal-cascade-stopped"] == "budget"
    assert len(engines["big"].requests) == 1  # the team's, not the poor tenant's
    if status == 429:
        assert poor.json()["error"]["code"] == "insufficient_quota"
    else:
        assert poor.headers["x-shoal-model"] == "cheap"
    assert ep.gate is not None
    assert ep.gate.tenants["poor"].pending.cost > 0  # the cheap attempt is billed either way
    team_cost = metric(ep, "shoal_tenant_cost_usd_total", tenant="team")
    big_cost = metric(ep, "shoal_cost_usd_total", model="big", tier="large")
    model_cost = big_cost + metric(ep, "shoal_cost_usd_total", model="cheap", tier="small")
    poor_cost = metric(ep, "shoal_tenant_cost_usd_total", tenant="poor")
    assert team_cost + poor_cost == pytest.approx(model_cost)  # every attempt billed
    # The team paid for big's answer and its own cheap one; the poor tenant for its cheap
    # one. (Each cost is its call's seconds at its tier's price, so how the two tenants'
    # cheap attempts compare depends on the machine's load: not compared.)
    assert team_cost > big_cost > 0 and poor_cost > 0


def test_a_named_model_is_never_cascaded() -> None:
    ep, engines = endpoint(cheap=-3.0)
    with serve(ep) as tc:
        raw = oa(tc).chat.completions.with_raw_response.create(
            model="cheap", messages=[{"role": "user", "content": "hi"}]
        )
    assert "x-shoal-cascade-models" not in raw.headers
    assert "logprobs" not in engines["cheap"].requests[0].params


def plan_artifact(
    path: Path, plan: CascadePlan | None = None, models: tuple[str, ...] = ("big", "cheap")
) -> str:
    """A two-cluster router (weather questions and arithmetic) over ``models`` with a cascade
    ``plan``: by default one that always accepts in the first cluster and always escalates in
    the second."""
    from shoal.routing import Sample, fit_router
    from shoal.routing.artifact import decode_artifact, encode_artifact
    from shoal.routing.embedders.hashing import HashingEmbedder

    samples = [
        Sample(prompt=p, task="t", scores={m: 1.0 if m == "big" else 0.6 for m in models},
               costs={m: 1.0 if m == "big" else 0.1 for m in models})
        for p in [f"weather in city {i} today" for i in range(6)]
        + [f"add {i} plus {i} numbers sum" for i in range(6)]
    ]  # fmt: skip
    data = fit_router(samples, embedder=HashingEmbedder(256), clusters=2, top_p=1, alpha=0.2)
    header, arrays = decode_artifact(data)
    plan = plan or CascadePlan("logprob_mean", (float("-inf"), float("inf")), -1.0, 2, 0.2, "t")
    header["cascade"] = plan.to_header()
    path.write_bytes(encode_artifact(header, arrays))
    return str(path)


def test_the_artifact_plan_sets_the_threshold_per_cluster(tmp_path: Path) -> None:
    ep, _ = endpoint(cheap=-0.1, artifact=plan_artifact(tmp_path / "router.bin"))
    assert ep.cascade is not None and ep.cascade.verdict(None).source == "plan"
    seen: dict[str, str] = {}
    with serve(ep) as tc:
        for prompt in ("weather in city 3 today", "add 2 plus 2 numbers sum"):
            raw = oa(tc).chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            assert raw.headers["x-shoal-cascade-threshold-source"] == "plan"
            seen[raw.headers["x-shoal-cluster"]] = raw.headers["x-shoal-cascade-models"]
    # One cluster accepts the confident cheap answer; the other always escalates.
    assert sorted(seen.values()) == ["cheap", "cheap,big"]


def test_a_plan_chain_orders_the_cluster_s_models(tmp_path: Path) -> None:
    from shoal.routing.cascade_plan import CascadeChain

    path = plan_artifact(tmp_path / "router.bin")
    from shoal.routing.artifact import decode_artifact, encode_artifact

    header, arrays = decode_artifact(Path(path).read_bytes())
    chains = (CascadeChain("big"), CascadeChain("big"))  # big alone, never escalating
    header["cascade"] = CascadePlan(
        "logprob_mean", (float("inf"), float("inf")), -1.0, 2, 0.2, "test", chains=chains
    ).to_header()
    Path(path).write_bytes(encode_artifact(header, arrays))
    ep, engines = endpoint(cheap=-0.1, artifact=path)
    with serve(ep) as tc:
        raw = ask(oa(tc))
    assert raw.headers["x-shoal-cascade-models"] == "big"  # the fitted chain, capped at one
    assert engines["cheap"].requests == []


# -- answer signals: the plan's agreement and verifier, computed on live answers -----------------


def voter_plan(signal: str, threshold: float, weights: tuple[float, ...] = ()) -> CascadePlan:
    """Both clusters: ``cheap`` answers multiple-choice questions, ``voter`` votes, ``big``
    takes what fails the check."""
    from shoal.routing.cascade_plan import CascadeChain

    chain = CascadeChain("cheap", ("voter",), "big", kind="choice", weights=weights, bias=0.0)
    return CascadePlan(signal, (threshold, threshold), threshold, 3, 0.2, "t", (chain, chain))


def voter_endpoint(
    tmp_path: Path, plan: CascadePlan, voter: str, voter_delay: float = 0.0, **cascade: str
) -> tuple[Endpoint, dict[str, FakeLogprobEngine]]:
    path = plan_artifact(tmp_path / "router.bin", plan, ("big", "cheap", "voter"))
    texts = {"cheap": "The answer is B.", "voter": voter, "big": "(A) surely"}
    return endpoint(artifact=path, texts=texts, voter_delay=voter_delay, cascade=cascade)


def test_an_answer_the_voter_agrees_with_is_kept(tmp_path: Path) -> None:
    ep, engines = voter_endpoint(tmp_path, voter_plan("agreement", 0.5), voter="(B)")
    with serve(ep) as tc:
        raw = ask(oa(tc))
    answer = raw.parse()
    assert raw.headers["x-shoal-cascade-signal"] == "agreement"
    assert raw.headers["x-shoal-cascade-threshold-source"] == "plan"
    assert raw.headers["x-shoal-cascade-models"] == "cheap"
    assert raw.headers["x-shoal-cascade-voters"] == "voter"
    assert raw.headers["x-shoal-cascade-confidence"] == "1.0000"
    assert answer.choices[0].message.content == "The answer is B."
    assert engines["big"].requests == []
    # The voter was asked the same question, unstreamed; no log-probabilities are asked for
    # a signal that reads the text; the client pays for the vote too.
    vote = engines["voter"].requests[0]
    assert vote.messages == engines["cheap"].requests[0].messages and not vote.stream
    assert "logprobs" not in engines["cheap"].requests[0].params
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (20, 6)
    assert metric(ep, "shoal_cascade_attempts_total", model="voter", outcome="voted") == 1
    assert metric(ep, "shoal_cascade_attempts_total", model="cheap", outcome="accepted") == 1


def test_an_answer_the_voter_disputes_escalates(tmp_path: Path) -> None:
    ep, engines = voter_endpoint(tmp_path, voter_plan("agreement", 0.5), voter="C")
    with serve(ep) as tc:
        raw = ask(oa(tc))
    answer = raw.parse()
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big"
    assert raw.headers["x-shoal-cascade-confidence"] == "0.0000,none"  # big's is kept unjudged
    assert raw.headers["x-shoal-model"] == "big"
    assert answer.choices[0].message.content == "(A) surely"
    assert len(engines["voter"].requests) == 1  # one vote, not a second for the escalation
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (30, 9)
    assert metric(ep, "shoal_cascade_attempts_total", model="cheap", outcome="escalated") == 1


def test_the_voters_asked_are_named_when_the_first_answer_is_broken(tmp_path: Path) -> None:
    ep, engines = voter_endpoint(tmp_path, voter_plan("agreement", 0.5), voter="(B)")
    with serve(ep) as tc:
        raw = ask(oa(tc), response_format={"type": "json_object"})  # no answer is JSON
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big"
    assert raw.headers["x-shoal-cascade-confidence"] == "invalid,invalid"
    assert raw.headers["x-shoal-cascade-voters"] == "voter"  # asked (and billed) all the same
    assert len(engines["voter"].requests) == 1


def test_a_voter_past_the_cost_cap_is_not_asked_and_counts_as_disputing(tmp_path: Path) -> None:
    ep, engines = voter_endpoint(
        tmp_path, voter_plan("agreement", 0.5), voter="(B)", maxCostPerRequest="0.005"
    )
    ep.book.cost_per_request.update(cheap=0.002, voter=0.004, big=0.01)  # cheap, voter: over
    with serve(ep) as tc:
        raw = ask(oa(tc))
    assert engines["voter"].requests == []
    assert "x-shoal-cascade-voters" not in raw.headers  # none asked
    assert raw.headers["x-shoal-cascade-confidence"].startswith("0.0000")  # a dispute
    # ... whose escalation is past the cap too: the cheap answer is kept.
    assert raw.headers["x-shoal-cascade-stopped"] == "cost"
    assert raw.headers["x-shoal-model"] == "cheap"


def test_a_voter_that_gives_no_answer_counts_as_disputing(tmp_path: Path) -> None:
    ep, _ = voter_endpoint(
        tmp_path, voter_plan("agreement", 0.5), voter="(B)", voter_delay=2.0,
        stageFirstTokenSeconds="0.2",
    )  # fmt: skip
    with serve(ep) as tc:
        raw = ask(oa(tc))
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big"
    assert raw.headers["x-shoal-cascade-confidence"] == "0.0000,none"
    assert metric(ep, "shoal_cascade_attempts_total", model="voter", outcome="failed") == 1


def test_the_verifier_reads_the_querys_cluster_similarities(tmp_path: Path) -> None:
    # Weights on the similarities alone: sure in cluster 0, doubtful in cluster 1, whatever
    # the voter says (features: 2 similarities, structure, log length, 1 agreement).
    plan = voter_plan("verifier", 0.5, weights=(10.0, -10.0, 0.0, 0.0, 0.0))
    ep, _ = voter_endpoint(tmp_path, plan, voter="(B)")
    seen: dict[str, tuple[str, float]] = {}
    with serve(ep) as tc:
        for prompt in ("weather in city 3 today", "add 2 plus 2 numbers sum"):
            raw = oa(tc).chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            assert raw.headers["x-shoal-cascade-signal"] == "verifier"
            first = float(raw.headers["x-shoal-cascade-confidence"].split(",")[0])
            seen[raw.headers["x-shoal-cluster"]] = (raw.headers["x-shoal-model"], first)
    assert seen["0"][0] == "cheap" and seen["0"][1] > 0.5
    assert seen["1"][0] == "big" and seen["1"][1] < 0.5


def test_a_verifier_that_cannot_score_judges_by_structure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = voter_plan("verifier", 0.5, weights=(1.0, 2.0))  # fitted for other features
    ep, _ = voter_endpoint(tmp_path, plan, voter="C")
    with serve(ep) as tc:
        raw = ask(oa(tc))
    assert raw.headers["x-shoal-cascade-confidence"] == "none"
    assert raw.headers["x-shoal-model"] == "cheap"
    assert "2 weights for 5 features" in caplog.text


# -- chains answered by the router's own choice, and chains of one -------------------------------


def test_a_routed_chain_answers_with_the_routers_choice_at_its_alpha(tmp_path: Path) -> None:
    from shoal.routing.cascade_plan import ROUTED, CascadeChain

    # The request ranks at the policy's cost-leaning alpha (cheap first); the plan's routed
    # chain ranks at alpha 1 (quality alone: big first) and never escalates.
    chain = CascadeChain(ROUTED, alpha=1.0, kind="text")
    inf = float("-inf")
    plan = CascadePlan("verifier", (inf, inf), inf, 1, 0.2, "t", (chain, chain))
    ep, engines = endpoint(cheap=-3.0, artifact=plan_artifact(tmp_path / "router.bin", plan))
    with serve(ep) as tc:
        raw = ask(oa(tc))
    assert raw.headers["x-shoal-cascade-models"] == "big"
    assert raw.headers["x-shoal-cascade-escalated"] == "false"
    assert engines["cheap"].requests == []


def test_a_chain_of_one_passes_a_failed_model_over(tmp_path: Path) -> None:
    from shoal.routing.cascade_plan import CascadeChain

    chains = (CascadeChain("cheap"), CascadeChain("cheap"))  # cheap alone, never escalating
    plan = CascadePlan("logprob_mean", (-9.0, -9.0), -9.0, 2, 0.2, "t", chains)
    ep, _ = endpoint(
        cheap=-0.1, cheap_delay=2.0, cascade={"stageFirstTokenSeconds": "0.2"},
        artifact=plan_artifact(tmp_path / "router.bin", plan),
    )  # fmt: skip
    with serve(ep) as tc:
        raw = ask(oa(tc))
    # The chain's one answer comes from the next ranked model, as fallback would have it.
    assert raw.headers["x-shoal-cascade-models"] == "cheap,big"
    assert raw.headers["x-shoal-cascade-confidence"] == "failed,-0.1000"
    assert raw.headers["x-shoal-model"] == "big"
