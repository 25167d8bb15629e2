"""Cascades in the fleet simulator: the extra attempts, tokens and latency they bring.

A cascade (RoutingPolicy strategy ``cascade``; :mod:`shoal.routing.cascade`) answers a query
with a cheap model first and, when the answer's confidence is under its threshold, asks the
model the router would have chosen. For capacity that means three kinds of load:

- every request's **first attempt** goes to the cheap model (the router's first choice at
  alpha 0), not to the router's choice at the policy's alpha;
- **voters** (the agreement signal) send the same query to the next cheap models at once;
- an **escalated** request is sent again, whole, to the router's choice at the policy's alpha,
  once the first model has finished its answer (the answer is verified before anything is
  sent on), so its user waits that first answer's generation time on top of the second
  model's.

:func:`cascade_trace` turns a trace into the trace of attempts (voters at the arrival,
escalations at the arrival plus the first model's full answer time when unloaded, a lower
bound under load), and :class:`CascadeRouting` routes each attempt to its model, so the
simulator, its hindsight baselines and its autoscaler see the cascade's real load per model.
Which requests escalate is drawn per request from ``escalation`` (a share, overall or per
topic: what ``shoal router eval`` measured for the fitted plan), seeded. Pure.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shoal.serving.engines.latency import LatencyModel
from shoal.sim.engine import Request
from shoal.sim.simulator import Routing

#: Topic suffixes that mark an attempt's role (the routing wrapper reads them).
VOTER = "\x00voter"
ESCALATED = "\x00escalated"


@dataclass(frozen=True)
class CascadeSpec:
    """How a fleet cascades: the share of requests that escalate and the voters per request."""

    #: Share of requests escalated, overall (a float) or per topic (missing topics: 0).
    escalation: float | Mapping[str, float]
    #: Cheap models asked alongside the first one, for the agreement signal.
    voters: int = 0
    seed: int = 0

    def share(self, topic: str) -> float:
        """The escalation share of ``topic``."""
        if isinstance(self.escalation, Mapping):
            return float(self.escalation.get(topic, 0.0))
        return float(self.escalation)


@dataclass(frozen=True)
class CascadeRouting:
    """Routes a cascade's attempts: first attempts and voters to the cheap models (the
    ranking at alpha 0), escalated attempts to the ranking at the policy's alpha."""

    routing: Routing

    def ranked(self, topic: str, prompt: int, alpha: float) -> tuple[str, ...]:
        base, role, index = split_topic(topic)
        cheap = self.routing.ranked(base, prompt, 0.0)
        if role == "escalated":
            return self.routing.ranked(base, prompt, alpha)
        if role == "voter":
            pick = cheap[min(index, len(cheap) - 1)]
            return (pick, *(m for m in cheap if m != pick))
        return cheap


def split_topic(topic: str) -> tuple[str, str, int]:
    """``(topic, role, voter index)`` of an attempt's topic (role ``first`` for plain ones)."""
    if topic.endswith(ESCALATED):
        return topic[: -len(ESCALATED)], "escalated", 0
    if VOTER in topic:
        base, _, n = topic.partition(VOTER)
        return base, "voter", int(n or 1)
    return topic, "first", 0


@dataclass(frozen=True)
class CascadeLoad:
    """What the cascade adds over sending each request once (for the report)."""

    requests: int
    attempts: int
    escalated: int
    voter_calls: int
    #: Tokens of the attempts beyond one per request (prompt and output).
    extra_prompt_tokens: int
    extra_output_tokens: int
    #: Seconds an escalated request's user waits for the first answer before the second
    #: model starts (unloaded: a lower bound), mean and 95th percentile.
    added_latency_mean: float
    added_latency_p95: float

    def as_dict(self) -> dict[str, float | int]:
        """JSON-safe form."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def cascade_trace(
    trace: Sequence[Request],
    spec: CascadeSpec,
    routing: Routing,
    answer_seconds: Mapping[str, Callable[[int, int], float]],
    *,
    alpha: float,
) -> tuple[list[Request], CascadeLoad]:
    """The trace of every attempt a cascade makes, and what it adds.

    ``answer_seconds`` maps a model to a callable ``(prompt_tokens, output_tokens) ->
    seconds`` for a whole unloaded answer (see :func:`answer_time`). A request whose cheap
    model is also its policy choice is not cascaded (nothing to escalate to).
    """
    rng = random.Random(spec.seed)
    out: list[tuple[float, str, int, int, int]] = []
    escalated = voters = extra_in = extra_out = 0
    waits: list[float] = []
    for req in trace:
        out.append((req.arrival, req.topic, req.prompt, req.prompt_tokens, req.output_tokens))
        cheap = routing.ranked(req.topic, req.prompt, 0.0)
        chosen = routing.ranked(req.topic, req.prompt, alpha)[0]
        if cheap[0] == chosen:
            rng.random()  # keep the draws aligned across requests
            continue
        for v in range(1, 1 + min(spec.voters, len(cheap) - 1)):
            out.append(
                (req.arrival, f"{req.topic}{VOTER}{v}", req.prompt, req.prompt_tokens,
                 req.output_tokens)
            )  # fmt: skip
            voters += 1
            extra_in += req.prompt_tokens
            extra_out += req.output_tokens
        if rng.random() < spec.share(req.topic):
            timer = answer_seconds.get(cheap[0])  # none for a model outside the fleet
            wait = timer(req.prompt_tokens, req.output_tokens) if timer else 0.0
            waits.append(wait)
            out.append(
                (req.arrival + wait, f"{req.topic}{ESCALATED}", req.prompt, req.prompt_tokens,
                 req.output_tokens)
            )  # fmt: skip
            escalated += 1
            extra_in += req.prompt_tokens
            extra_out += req.output_tokens
    out.sort(key=lambda row: row[0])
    attempts = [Request(i, *row) for i, row in enumerate(out)]
    waits.sort()
    load = CascadeLoad(
        requests=len(trace),
        attempts=len(attempts),
        escalated=escalated,
        voter_calls=voters,
        extra_prompt_tokens=extra_in,
        extra_output_tokens=extra_out,
        added_latency_mean=sum(waits) / len(waits) if waits else 0.0,
        added_latency_p95=waits[min(len(waits) - 1, int(0.95 * len(waits)))] if waits else 0.0,
    )
    return attempts, load


def answer_time(latency: LatencyModel) -> Callable[[int, int], float]:
    """A whole answer's unloaded seconds for an engine :class:`LatencyModel`: its first
    token alone on the replica, then the rest at the inter-token time of a batch of one."""

    def seconds(prompt_tokens: int, output_tokens: int) -> float:
        first = latency.ttft_seconds(prompt_tokens, 0)
        return first + max(0, output_tokens - 1) * latency.inter_token_seconds(1)

    return seconds
