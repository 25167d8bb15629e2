"""The cascade stage of the fleet endpoint: answer with the first ranked model, check the
answer, call the next one only when it needs to.

Called by :meth:`shoal.serving.ingress.Endpoint.generate` in place of the fallback caller
when the fleet's RoutingPolicy has a ``cascade`` and the request is routed (``model: "auto"``
or the fleet's name; a named model is never cascaded). For each model of the ranked list, in
order, within ``maxChain`` calls:

Where the artifact's plan carries a fitted chain for the query's cluster, its answering
model goes first and the model it escalates to next (then the rest of the ranking).

1. the model answers whole, unstreamed, asked for its token log-probabilities (for a
   log-probability signal) whether or not the client asked
   (:meth:`FallbackCaller.whole_answer` keeps its books and bills its time);
2. the answer's structure is checked first (tool calls against their functions' parameters,
   a ``response_format`` answer against its schema): a failing one escalates;
3. its confidence is compared with the threshold of the query's router cluster from the
   artifact's cascade plan (:class:`~shoal.routing.cascade_plan.CascadePlan`), or the
   policy's ``threshold`` where the artifact carries none; at or above it the answer is kept.
   The confidence is the plan's signal: token log-probabilities
   (:mod:`shoal.serving.cascade_signals`), or, for a plan fitted with ``agreement`` or the
   ``verifier``, the answer's text read as the fit read it
   (:func:`shoal.routing.cascade_score.chain_confidence`): the chain's voters are asked the
   same query at the same time as its answering model (whole, unstreamed, billed as any
   attempt; those the request's cost cap or the tenant's budget has no room for are not
   asked, and count as disagreeing), and the answer is scored by its agreement with
   theirs, or by the fitted verifier over the query's cluster similarities, the answer's
   structure and length and that agreement. An answer without log-probabilities (an
   engine that gives none), an escalation's answer under an answer signal, and one the
   plan cannot score are judged by their structure alone;
4. before an escalation: the chain's deadline (at least one stage's first-token deadline
   must be left of it), the policy's cost cap per request (each model
   estimated from its recent cost per request) and the tenant's budget and token limit are
   checked against the escalation target; with no room the answer in hand is returned
   (``x-shoal-cascade-stopped``), or, for the tenant's budget under ``onBudgetExhausted:
   Refuse``, a 429 ``insufficient_quota``.

The answer goes out only once the chain is over, so no byte is ever taken back: a unary
client gets the kept answer, a streaming client (``streaming: Replay``) gets it replayed as
OpenAI stream events; ``streaming: FirstModel`` (the policy's or the tenant's choice) streams
the first model through the fallback caller without a cascade (:meth:`CascadeStage.applies`).
The answer's ``usage`` sums every attempt, as the tenant is billed for every attempt (once,
when the chain is over); each attempt counts in the models' metrics and in
``shoal_cascade_attempts_total``. Headers: ``x-shoal-cascade-models`` (the models called, in
order), ``x-shoal-cascade-confidence`` (each one's confidence, ``none`` without
log-probabilities, ``invalid`` when its structure failed, ``failed`` when it gave no answer),
``x-shoal-cascade-voters`` (the voters asked, when the signal has any),
``x-shoal-cascade-threshold``, ``x-shoal-cascade-escalated`` and ``x-shoal-model``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response, StreamingResponse

from shoal.api.v1alpha1.policy import CascadeSpec
from shoal.contract import BuildArgs
from shoal.routing.cascade_plan import CascadeChain, CascadePlan
from shoal.routing.cascade_score import ANSWER_SIGNALS, ScoreError, chain_confidence
from shoal.serving import http
from shoal.serving.capabilities import Capabilities
from shoal.serving.cascade_signals import (
    API_SIGNALS,
    LOGPROB_SIGNALS,
    TOP_LOGPROBS,
    confidence,
    structural_problem,
    without_logprobs,
)
from shoal.serving.clients import ModelRejected, ModelUnavailable
from shoal.serving.engines.base import Chunk, GenerationRequest
from shoal.serving.fallback import Done, FallbackCaller
from shoal.serving.feedback import decision_propensity, logged_prefix
from shoal.serving.metrics import RouterMetrics
from shoal.serving.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    approx_prompt_tokens,
    chat_body,
    completion_body,
    sse,
    usage,
)
from shoal.serving.tenants import TenantGate, TenantRefused, TenantState

log = logging.getLogger("shoal.serving.cascade")

SSE_DONE = b"data: [DONE]\n\n"


@dataclass
class Attempt:
    """One model's answer in the chain."""

    model: str
    rid: str
    body: dict[str, Any]
    confidence: float | None
    problem: str | None
    accepted: bool


@dataclass
class Ledger:
    """What the chain's attempts used, told by each attempt's billing (``done``)."""

    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    counted: bool = False
    last_model: str | None = None
    costs: dict[str, float] = field(default_factory=dict)

    def done(
        self, model: str | None, code: int, prompt: int | None, completion: int | None, cost: float
    ) -> None:
        self.cost += cost
        if prompt is not None:
            self.counted = True
            self.prompt_tokens += prompt
            self.completion_tokens += completion or 0
        if model is not None:
            self.last_model = model
            self.costs[model] = self.costs.get(model, 0.0) + cost


@dataclass(frozen=True)
class Verdict:
    """Where a threshold comes from, for one request, and the plan's fitted chain for the
    query's cluster (None without one)."""

    signal: str
    threshold: float
    source: str  # "plan" or "policy"
    chain: CascadeChain | None = None

    @property
    def reads_answers(self) -> bool:
        """Whether the signal reads the answer's text (agreement, verifier), not its
        log-probabilities."""
        return self.signal in ANSWER_SIGNALS


@dataclass
class Votes:
    """The voters' answers to the first model's query (None where one gave none)."""

    models: list[str] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)


class CascadeStage:
    """The cascade over one request's ranked models (module docstring)."""

    def __init__(
        self,
        args: BuildArgs,
        spec: CascadeSpec,
        caller: FallbackCaller,
        metrics: RouterMetrics,
        capabilities: dict[str, Capabilities],
        plan: Callable[[], CascadePlan | None],
        gate: Callable[[], TenantGate | None],
        rerank: Callable[[Sequence[float], float], list[str]] | None = None,
    ) -> None:
        self.args = args
        self.spec = spec
        self.limits = args.limits
        self.caller = caller
        self.book = caller.book
        self.metrics = metrics
        self.capabilities = capabilities
        self._plan = plan
        self._gate = gate
        #: Ranks a query from its centroid similarities at another alpha (the cluster
        #: ranker's ``rank_similarity``), for chains answered by the router's own choice.
        self._rerank = rerank
        self._warned: set[str] = set()

    # -- whether and how ----------------------------------------------------------------------

    def applies(self, parsed: ChatRequest | CompletionRequest, tenant: TenantState | None) -> bool:
        """Whether this routed request is cascaded: every unary one; a streaming one unless
        the tenant's (else the policy's) streaming choice is FirstModel."""
        if not parsed.streaming:
            return True
        choice = tenant.spec.cascade_streaming if tenant is not None else None
        return (choice or self.spec.streaming) == "Replay"

    def verdict(self, cluster: int | None) -> Verdict:
        """The signal and threshold for a query of ``cluster``: the artifact's plan where
        serving can compute its signal for this cluster (log-probabilities always; agreement
        and the verifier where the plan fitted a chain for the cluster), else the policy's."""
        plan = self._plan()
        if plan is not None:
            chain = plan.chain(cluster)
            if plan.signal in LOGPROB_SIGNALS:
                return Verdict(plan.signal, plan.threshold(cluster), "plan", chain)
            if plan.signal in ANSWER_SIGNALS and chain is not None:
                return Verdict(plan.signal, plan.threshold(cluster), "plan", chain)
            if plan.signal not in self._warned:
                self._warned.add(plan.signal)
                log.warning(
                    "the router artifact's cascade plan is fitted for the %s signal without a "
                    "chain for every cluster; where it has none the policy's %s threshold "
                    "applies",
                    plan.signal,
                    self.spec.signal,
                )
        return Verdict(API_SIGNALS[self.spec.signal], float(self.spec.threshold), "policy")

    def _fitted_chain(
        self, verdict: Verdict, similarity: Sequence[float] | None, ranked: list[str]
    ) -> list[str] | None:
        """The models the plan fitted for the query's cluster (its answering model, then
        the one it escalates to), when the plan carries chains; None otherwise. A chain
        answered by the router's own choice (``@router``) names the first model the router
        ranks at the chain's alpha, from the query's centroid similarities (the request's
        own ranking when those are not known)."""
        found = verdict.chain
        if found is None:
            return None
        answer = found.answer
        if found.routed:
            answer = self._routed_choice(found, similarity, ranked) or answer
        return [answer, *([found.escalate] if found.escalate else [])]

    def _routed_choice(
        self, chain: CascadeChain, similarity: Sequence[float] | None, ranked: list[str]
    ) -> str | None:
        """The router's first choice at ``chain.alpha`` among ``ranked`` (the models this
        request may use) that can answer now."""
        order: list[str] = []
        if similarity is not None and self._rerank is not None and chain.alpha is not None:
            try:
                order = self._rerank(similarity, chain.alpha)
            except ValueError as exc:  # the artifact was reloaded since the query was ranked
                log.info("the routed chain ranks by the request's order: %s", exc)
        for model in [*order, *ranked]:
            if model in ranked and self._ready(model):
                return model
        return None

    def _ready(self, model: str) -> bool:
        """Whether ``model`` may be called now (not parked, not cooling down)."""
        return model not in self.args.parked and self.book.health.healthy(model)

    def max_chain(self) -> int:
        plan = self._plan()
        return min(self.spec.max_chain, plan.max_chain) if plan is not None else self.spec.max_chain

    # -- the chain ------------------------------------------------------------------------------

    async def call(
        self,
        api: http.Api,
        parsed: ChatRequest | CompletionRequest,
        gen: GenerationRequest,
        ranked: list[str],
        headers: dict[str, str],
        cluster: int | None,
        done: Done | None,
        tenant: TenantState | None,
        similarity: Sequence[float] | None = None,
    ) -> Response:
        """The kept answer of the chain (see the module docstring), or the error that says why
        there is none; ``done`` is told once, with every attempt's tokens and cost.
        ``similarity`` is the query's cosine similarity to each router centroid (the
        verifier's features)."""
        verdict = self.verdict(cluster)
        now = time.monotonic()
        deadline = now + (self.spec.chain_seconds or self.limits.request_timeout_seconds)
        stage = self.spec.stage_seconds or self.limits.first_token_timeout_seconds
        chain = self.caller.candidates(ranked)
        limit = self.max_chain()
        fitted = self._fitted_chain(verdict, similarity, ranked)
        if fitted is not None:  # the plan's chain for this cluster, where it can serve
            lead = [m for m in fitted if m in ranked and self._ready(m)]
            if lead:
                chain = lead + [m for m in chain if m not in lead]
                if len(fitted) == 1:
                    limit = 1  # the fit found escalation never pays in this cluster
        prefix = "chatcmpl-" if api == "chat" else "cmpl-"
        ledger = Ledger()
        tried: list[str] = []
        marks: list[str] = []
        kept: Attempt | None = None
        stopped: str | None = None
        errors: list[ModelUnavailable] = []
        escalated: set[str] = set()  # attempts counted as escalated
        voting: asyncio.Task[Votes] | None = None
        votes = Votes()
        asked: list[str] = []  # the voters asked (their answers in ``votes`` if awaited)
        plan = verdict.chain
        try:
            for i, model in enumerate(chain):
                if len(tried) - len(errors) >= limit:  # a model that failed is passed over
                    stopped = "chain" if kept is not None and not kept.accepted else None
                    break
                if kept is not None:  # an escalation: is there room for it?
                    stopped = self._no_room(model, ledger, deadline, stage, parsed, tenant)
                    if stopped is not None:
                        break
                elif time.monotonic() >= deadline:
                    stopped = "deadline"
                    break
                client = self.book.clients[model]
                rid = self.caller.ids.issue(
                    logged_prefix(prefix, decision_propensity(headers, cluster, i)), model, cluster
                )
                attempt_gen = dataclasses.replace(
                    gen,
                    request_id=rid,
                    model_name=model,
                    stream=False,
                    include_usage=False,
                    params=self._params(api, gen.params, model, verdict.signal),
                )
                remaining = max(0.0, deadline - time.monotonic())
                first = remaining if getattr(client, "answers_whole", False) else stage
                tried.append(model)
                if kept is not None and kept.rid not in escalated:
                    escalated.add(kept.rid)
                    self.metrics.cascade_attempt(kept.model, "escalated")
                # The answer the plan's answer signal was fitted for (never a routed one).
                judged = plan is not None and not tried[:-1] and model == plan.answer
                if judged and verdict.reads_answers and plan is not None:
                    asked = self._voters(
                        plan, model, ranked, ledger, deadline, stage, parsed, tenant
                    )
                    voting = asyncio.create_task(
                        self._votes(api, gen, plan, asked, stage, deadline, ledger)
                    )
                try:
                    text, last = await self.caller.whole_answer(
                        api, client, attempt_gen, min(first, remaining), deadline, ledger.done
                    )
                except ModelUnavailable as exc:
                    errors.append(exc)
                    marks.append("failed")
                    self.caller.unavailable(model, exc, rid, more=i + 1 < len(chain))
                    self.metrics.cascade_attempt(model, "failed")
                    votes = await _settle(voting, cancel=True)
                    voting = None
                    continue
                body = answer_body(api, rid, model, text, last)
                problem = structural_problem(gen.params, body) if api == "chat" else None
                if voting is not None:  # a broken answer escalates whatever they say
                    votes = await _settle(voting, cancel=problem is not None)
                    voting = None
                score = (
                    None
                    if problem is not None
                    else self._score(verdict, body, judged, votes, similarity)
                )
                accepted = problem is None and (score is None or score >= verdict.threshold)
                marks.append(
                    "invalid"
                    if problem is not None
                    else "none"
                    if score is None
                    else f"{score:.4f}"
                )
                attempt = Attempt(model, rid, body, score, problem, accepted)
                if problem is not None:
                    log.info("request %s: %s's answer escalates: %s", rid, model, problem)
                # The answer in hand: the latest with a sound structure (else the latest).
                if kept is None or problem is None or kept.problem is not None:
                    kept = attempt
                if accepted:
                    break
        except BaseException as exc:
            if voting is not None:
                await _settle(voting, cancel=True)
            if not isinstance(exc, Exception):  # the client went away mid-chain
                if done is not None:
                    done(ledger.last_model, 499, *self._tokens(ledger), ledger.cost)
                raise
            raise
        out = dict(headers)
        if asked:
            out["x-shoal-cascade-voters"] = ",".join(asked)
        out["x-shoal-cascade-models"] = ",".join(tried)
        out["x-shoal-cascade-confidence"] = ",".join(marks)
        out["x-shoal-cascade-signal"] = verdict.signal
        out["x-shoal-cascade-threshold"] = f"{verdict.threshold:.4f}"
        out["x-shoal-cascade-threshold-source"] = verdict.source
        out["x-shoal-cascade-escalated"] = "true" if len(tried) > 1 else "false"
        if kept is None:
            return self._none(api, errors, ledger, done, out)
        if stopped is not None and not kept.accepted:
            out["x-shoal-cascade-stopped"] = stopped
            if stopped == "budget" and self.spec.on_budget_exhausted == "Refuse":
                self.metrics.cascade_attempt(kept.model, "kept")
                return self._refuse(api, ledger, done, out)
        self.metrics.cascade_attempt(kept.model, "accepted" if kept.accepted else "kept")
        out["x-shoal-model"] = kept.model
        if done is not None:
            done(kept.model, 200, *self._tokens(ledger), ledger.cost)
        body = client_body(kept.body, parsed, ledger)
        if parsed.streaming:
            return replay(api, body, parsed.include_usage, out)
        return http.json_response(body, headers=out)

    # -- escalation room ------------------------------------------------------------------------

    def _estimate(self, model: str, ledger: Ledger) -> float:
        """What calling ``model`` will cost: its recent cost per request, else what the chain
        spent so far scaled by the two models' replica prices."""
        recent = self.book.cost_per_request.get(model)
        if recent is not None:
            return recent
        target = self.book.clients[model].info.cost_per_replica_hour
        for spent_on, cost in ledger.costs.items():
            base = self.book.clients[spent_on].info.cost_per_replica_hour
            if base > 0:
                return cost * target / base
        return 0.0

    def _no_room(
        self,
        model: str,
        ledger: Ledger,
        deadline: float,
        stage: float,
        parsed: ChatRequest | CompletionRequest,
        tenant: TenantState | None,
        committed: float = 0.0,
    ) -> str | None:
        """Why the chain may not call ``model`` next (None: it may); ``committed``: the cost
        of calls made but not in the ledger yet (a vote's, beside the answering model)."""
        if deadline - time.monotonic() < stage:
            return "deadline"  # not even one first-token deadline left for the next model
        estimate = self._estimate(model, ledger) + committed
        cap = self.spec.max_cost_per_request
        if cap is not None and ledger.cost + estimate > float(cap):
            return "cost"
        gate = self._gate()
        if gate is None or tenant is None:
            return None
        spec = tenant.spec
        now = gate.clock()
        # The chain's own attempts are billed when it is over: count them here.
        budget = spec.max_cost_per_hour
        spent = gate.spent(tenant, now) + ledger.cost + estimate
        if budget is not None and spent >= float(budget):
            return "budget"
        tpm = spec.limits.tokens_per_minute
        if tpm is not None:
            snap = tenant.snapshot
            used = (
                snap.tokens + tenant.pending.tokens + tenant.sent.tokens
                if snap is not None and gate.store_up
                else tenant.tokens.used(now)
            )
            # The prompt is reserved once at admission; the chain adds its completions and
            # the escalation's prompt again.
            again = approx_prompt_tokens(parsed)
            if used + ledger.completion_tokens + again > tpm:
                return "budget"
        return None

    # -- answer signals: voters and the verifier --------------------------------------------

    def _voters(
        self,
        chain: CascadeChain,
        answering: str,
        ranked: list[str],
        ledger: Ledger,
        deadline: float,
        stage: float,
        parsed: ChatRequest | CompletionRequest,
        tenant: TenantState | None,
    ) -> list[str]:
        """The chain's voters to ask beside ``answering``: those that can serve this request
        (in ``ranked``, the router's list cut to the capable models, and allowed to the
        tenant), are not parked or cooling down, and fit the request's cost cap and the
        tenant's budget and tokens with the answering model's call and the voters before
        them counted. The others count as disagreeing, unasked."""
        committed = self._estimate(answering, ledger)
        asked = []
        for model in chain.voters:
            if model not in ranked or model not in self.book.clients or not self._ready(model):
                continue
            if self._no_room(model, ledger, deadline, stage, parsed, tenant, committed):
                continue
            committed += self._estimate(model, ledger)
            asked.append(model)
        return asked

    async def _votes(
        self,
        api: http.Api,
        gen: GenerationRequest,
        chain: CascadeChain,
        asked: list[str],
        stage: float,
        deadline: float,
        ledger: Ledger,
    ) -> Votes:
        """The voters in ``asked`` (:meth:`_voters`) asked the same query at once, whole and
        unstreamed, beside the chain's answering model: each of the chain's voters' answer
        text, None where it gave none (not asked, or failing now: it counts as disagreeing).
        Each vote is billed as any attempt is."""

        async def one(model: str) -> str | None:
            client = self.book.clients[model]
            rid = http.new_id(api)
            vote = dataclasses.replace(
                gen, request_id=rid, model_name=model, stream=False, include_usage=False
            )
            remaining = max(0.0, deadline - time.monotonic())
            first = remaining if getattr(client, "answers_whole", False) else stage
            try:
                text, last = await self.caller.whole_answer(
                    api, client, vote, min(first, remaining), deadline, ledger.done
                )
            except ModelUnavailable as exc:
                self.caller.unavailable(model, exc, rid, more=True)
                self.metrics.cascade_attempt(model, "failed")
                return None
            self.metrics.cascade_attempt(model, "voted")
            return answer_text(answer_body(api, rid, model, text, last))

        texts = dict(zip(asked, await asyncio.gather(*(one(m) for m in asked)), strict=True))
        return Votes(list(chain.voters), [texts.get(m) for m in chain.voters])

    def _score(
        self,
        verdict: Verdict,
        body: dict[str, Any],
        judged: bool,
        votes: Votes,
        similarity: Sequence[float] | None,
    ) -> float | None:
        """The confidence in one answer of a sound structure: its log-probabilities' under a
        log-probability signal; under ``agreement`` or ``verifier``, the plan's confidence in
        the answer it was fitted for (``judged``). None where no signal applies (a later
        answer of an agreement or verifier chain) or it cannot be computed: the answer is then
        judged by its structure alone."""
        chain = verdict.chain
        if not verdict.reads_answers:
            return confidence(verdict.signal, body)
        if not judged or chain is None:
            return None
        voters = votes.texts if votes.models else [None] * len(chain.voters)
        try:
            return chain_confidence(verdict.signal, chain, answer_text(body), voters, similarity)
        except ScoreError as exc:
            if str(exc) not in self._warned:
                self._warned.add(str(exc))
                log.warning("the cascade plan cannot score this answer: %s", exc)
            return None

    # -- answers --------------------------------------------------------------------------------

    def _params(
        self, api: http.Api, params: dict[str, Any], model: str, signal: str
    ) -> dict[str, Any]:
        """The client's parameters with log-probabilities asked for (where the model's
        engine gives them): as many candidates per token as the client asked, at least
        :data:`TOP_LOGPROBS` for the margin signal. Unchanged for a signal that reads the
        answer's text (agreement, verifier) or an engine without log-probabilities."""
        if not self.capabilities[model].logprobs or signal not in LOGPROB_SIGNALS:
            return params
        top = TOP_LOGPROBS if signal == "logprob_margin" else 0
        if api == "chat":
            asked = int(params.get("top_logprobs") or 0) if params.get("logprobs") else 0
            out = {**params, "logprobs": True}
            if max(top, asked):
                out["top_logprobs"] = max(top, asked)
            return out
        asked_k = params.get("logprobs")
        return {**params, "logprobs": max(top, 1, int(asked_k or 0))}

    @staticmethod
    def _tokens(ledger: Ledger) -> tuple[int | None, int | None]:
        if not ledger.counted:
            return None, None
        return ledger.prompt_tokens, ledger.completion_tokens

    def _none(
        self,
        api: http.Api,
        errors: list[ModelUnavailable],
        ledger: Ledger,
        done: Done | None,
        headers: dict[str, str],
    ) -> Response:
        """No model of the chain answered: 400 when every one rejected the request itself,
        504 when the chain's deadline left no time, 503 otherwise."""
        if errors and all(isinstance(e, ModelRejected) for e in errors):
            last = errors[-1]
            assert isinstance(last, ModelRejected)
            err = ApiError(400, str(last), param=last.param, code=last.code)
        elif not errors or errors[-1].reason == "timeout":
            err = ApiError(
                504,
                "No model of the cascade answered within its deadline.",
                type="server_error",
                code="timeout",
            )
        else:
            err = ApiError(
                503,
                f"No model of the fleet could take the request (last error: "
                f"{errors[-1].reason}); retry later.",
                type="server_error",
                code="overloaded",
                headers={"retry-after": str(self.limits.retry_after_seconds)},
            )
        self.metrics.reject(api, err.status)
        if done is not None:
            done(None, err.status, *self._tokens(ledger), ledger.cost)
        return http.error_response(err, headers)

    def _refuse(
        self, api: http.Api, ledger: Ledger, done: Done | None, headers: dict[str, str]
    ) -> Response:
        err = TenantRefused(
            "budget",
            429,
            "The answer needs a larger model and this API key's budget has no room for it.",
            code="insufficient_quota",
        )
        self.metrics.reject(api, 429)
        if done is not None:
            done(None, 429, *self._tokens(ledger), ledger.cost)
        return http.error_response(err, headers)


async def _settle(task: asyncio.Task[Votes] | None, *, cancel: bool) -> Votes:
    """The voters' answers once their task is over (none when it is cancelled first: the
    first answer failed or its structure already decides)."""
    if task is None:
        return Votes()
    if cancel:
        task.cancel()
    await asyncio.wait([task])
    if task.cancelled():
        return Votes()
    exc = task.exception()
    if exc is not None:
        log.warning("the cascade's voters failed: %r", exc)
        return Votes()
    return task.result()


def answer_text(body: dict[str, Any]) -> str:
    """What an answer says, as the answer signals read it: a chat message's content (its
    tool calls as JSON when it has no content), a completion's text."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, str) and content:
            return content
        calls = message.get("tool_calls")
        return json.dumps(calls, sort_keys=True) if calls else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def answer_body(api: http.Api, rid: str, model: str, text: str, last: Chunk) -> dict[str, Any]:
    """A whole answer as its OpenAI body: the engine's own where it wrote one, else built."""
    if last.data:
        try:
            body = json.loads(last.data)
        except ValueError:
            body = None
        if isinstance(body, dict):
            return body
    build = chat_body if api == "chat" else completion_body
    return build(
        rid,
        int(time.time()),
        model,
        text,
        last.finish_reason or "stop",
        last.prompt_tokens or 0,
        last.completion_tokens or 0,
    )


def client_body(
    body: dict[str, Any], parsed: ChatRequest | CompletionRequest, ledger: Ledger
) -> dict[str, Any]:
    """The kept answer as the client gets it: usage summed over every attempt, and the
    log-probabilities only as far as the client asked for them."""
    params = parsed.body
    if isinstance(parsed, ChatRequest):
        asked = bool(params.get("logprobs"))
        top = int(params.get("top_logprobs") or 0)
    else:
        asked = params.get("logprobs") is not None
        top = int(params.get("logprobs") or 0)
    out = without_logprobs(body) if not asked else _trim_top(body, top)
    if ledger.counted:
        out["usage"] = usage(ledger.prompt_tokens, ledger.completion_tokens)
    return out


def _trim_top(body: dict[str, Any], top: int) -> dict[str, Any]:
    """Each token's candidates cut to the ``top`` the client asked for."""
    choices = []
    for choice in body.get("choices") or []:
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            content = [
                {**t, "top_logprobs": (t.get("top_logprobs") or [])[:top]}
                if isinstance(t, dict)
                else t
                for t in lp["content"]
            ]
            choice = {**choice, "logprobs": {**lp, "content": content}}
        elif isinstance(lp, dict) and isinstance(lp.get("top_logprobs"), list):
            tops = [
                dict(list(t.items())[:top]) if isinstance(t, dict) else t
                for t in lp["top_logprobs"]
            ]
            choice = {**choice, "logprobs": {**lp, "top_logprobs": tops}}
        choices.append(choice)
    return {**body, "choices": choices}


def replay_events(api: http.Api, body: dict[str, Any], include_usage: bool) -> list[bytes]:
    """A whole answer as OpenAI stream events: the message (or text) in one event, its finish
    reason in the next, the usage last when the client asked for it, then ``[DONE]``."""
    head = {k: body.get(k) for k in ("id", "created", "model")}
    choice = (body.get("choices") or [{}])[0]
    finish = choice.get("finish_reason") or "stop"
    events: list[bytes] = []
    first: dict[str, Any]
    end: dict[str, Any]
    if api == "chat":
        head["object"] = "chat.completion.chunk"
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(message["tool_calls"])
            ]
        first = {
            "index": 0,
            "delta": delta,
            "logprobs": choice.get("logprobs"),
            "finish_reason": None,
        }
        end = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
    else:
        head["object"] = "text_completion"
        first = {"index": 0, "text": choice.get("text") or "", "logprobs": choice.get("logprobs"),
                 "finish_reason": None}  # fmt: skip
        end = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
    events.append(sse({**head, "choices": [first]}))
    events.append(sse({**head, "choices": [end]}))
    if include_usage and body.get("usage") is not None:
        events.append(sse({**head, "choices": [], "usage": body["usage"]}))
    events.append(SSE_DONE)
    return events


def replay(
    api: http.Api, body: dict[str, Any], include_usage: bool, headers: dict[str, str]
) -> StreamingResponse:
    """The verified answer replayed to a streaming client."""

    async def events() -> AsyncIterator[bytes]:
        for event in replay_events(api, body, include_usage):
            yield event

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache", **headers}
    )
