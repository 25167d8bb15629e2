"""A cascade's confidence signals: pure functions of one answer's OpenAI body.

Called by the cascade stage (:mod:`shoal.serving.cascade`) on the first model's whole answer,
which the stage asked for with log-probabilities whether or not the client did:

- :func:`structural_problem` comes first: a tool call whose arguments do not parse or do not
  validate against the function's parameters, a missing call the client required, or a
  ``response_format`` answer that is not JSON valid under its schema (checked with
  :mod:`shoal.serving.structured`) is a problem, and the answer escalates whatever its
  log-probabilities say;
- :func:`confidence` reads the answer's token log-probabilities (chat: ``logprobs.content``;
  completions: ``logprobs.token_logprobs`` and ``top_logprobs``) and scores them by one of
  :data:`shoal.routing.cascade_plan.SIGNALS`: ``logprob_mean`` (mean log-probability of the
  chosen tokens), ``logprob_min`` (the least likely chosen token) or ``logprob_margin``
  (mean gap between the two most likely candidates of each token; needs ``top_logprobs``
  of at least 2). None when the answer carries no log-probabilities (the engine gave none);
- :func:`without_logprobs` takes them out again before a client that did not ask sees it.

No I/O, no Ray: unit-tested on their own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shoal.serving.structured import schema_violation

#: The signals serving computes (the plan may name others, fitted offline only).
LOGPROB_SIGNALS = ("logprob_mean", "logprob_min", "logprob_margin")
#: RoutingPolicy's names for them.
API_SIGNALS = {
    "LogprobMean": "logprob_mean",
    "LogprobMin": "logprob_min",
    "LogprobMargin": "logprob_margin",
}
#: Candidates per token a cascade asks for (the margin needs the top two).
TOP_LOGPROBS = 2


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and its top candidates' (best first)."""

    logprob: float
    top: tuple[float, ...] = ()


def token_logprobs(body: dict[str, Any]) -> list[TokenLogprob] | None:
    """The answer's tokens with their log-probabilities, or None when it carries none."""
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    lp = choices[0].get("logprobs")
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")
    if isinstance(content, list):  # chat
        out: list[TokenLogprob] = []
        for item in content:
            if not isinstance(item, dict) or not _finite(item.get("logprob")):
                continue
            tops = [t.get("logprob") for t in item.get("top_logprobs") or [] if isinstance(t, dict)]
            out.append(TokenLogprob(float(item["logprob"]), _ordered(tops)))
        return out or None
    chosen = lp.get("token_logprobs")
    if isinstance(chosen, list):  # completions
        tops_list = lp.get("top_logprobs") or []
        out = []
        for i, value in enumerate(chosen):
            if not _finite(value):
                continue
            top = tops_list[i] if i < len(tops_list) and isinstance(tops_list[i], dict) else {}
            out.append(TokenLogprob(float(value), _ordered(list(top.values()))))
        return out or None
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _ordered(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(sorted((float(v) for v in values if _finite(v)), reverse=True))


def logprob_mean(tokens: Sequence[TokenLogprob]) -> float:
    """Mean log-probability of the chosen tokens (0 is certain; lower is less sure)."""
    return sum(t.logprob for t in tokens) / len(tokens)


def logprob_min(tokens: Sequence[TokenLogprob]) -> float:
    """The least likely chosen token's log-probability."""
    return min(t.logprob for t in tokens)


def logprob_margin(tokens: Sequence[TokenLogprob]) -> float | None:
    """Mean gap between each token's two most likely candidates (0: a coin toss; larger is
    surer); None when no token lists two candidates."""
    gaps = [t.top[0] - t.top[1] for t in tokens if len(t.top) >= 2]
    return sum(gaps) / len(gaps) if gaps else None


def confidence(signal: str, body: dict[str, Any]) -> float | None:
    """The answer's confidence under ``signal`` (one of :data:`LOGPROB_SIGNALS`); None when
    the answer has no log-probabilities to score."""
    tokens = token_logprobs(body)
    if not tokens:
        return None
    if signal == "logprob_mean":
        return logprob_mean(tokens)
    if signal == "logprob_min":
        return logprob_min(tokens)
    if signal == "logprob_margin":
        return logprob_margin(tokens)
    raise ValueError(f"serving computes no cascade signal {signal!r}")


def structural_problem(params: dict[str, Any], body: dict[str, Any]) -> str | None:
    """Why a chat answer is not the structure the client asked for (None: it is, or nothing
    was asked): tool calls against their functions' parameters, a required call, a JSON
    answer against ``response_format``."""
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return "the answer has no choices"
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return None  # a completion: no structure to check
    tools = {
        t["function"]["name"]: t["function"].get("parameters") or {"type": "object"}
        for t in params.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]
    }
    calls = message.get("tool_calls") or []
    structured = bool(tools) or isinstance(params.get("response_format"), dict)
    if structured and choice.get("finish_reason") == "length":
        return "the structured answer was cut at max_tokens"
    if tools:
        choice_ = params.get("tool_choice")
        if not calls and (choice_ == "required" or isinstance(choice_, dict)):
            return "the client required a tool call and the answer has none"
        for call in calls:
            problem = _call_problem(call, tools)
            if problem is not None:
                return problem
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and not calls:
        text = message.get("content") or ""
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            problem = schema_violation(schema if isinstance(schema, dict) else {}, text)
            if problem is not None:
                return f"the answer is off the response_format schema {problem}"
        elif fmt.get("type") == "json_object":
            try:
                value = json.loads(text)
            except ValueError:
                return "the answer is not a JSON object"
            if not isinstance(value, dict):
                return "the answer is not a JSON object"
    return None


def _call_problem(call: Any, tools: dict[str, dict[str, Any]]) -> str | None:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return "a tool call has no function"
    name = fn.get("name")
    if name not in tools:
        return f"a tool call names an unknown function {name!r}"
    arguments = fn.get("arguments")
    problem = schema_violation(tools[name], arguments if isinstance(arguments, str) else "")
    if problem is not None:
        return f"the arguments of {name} are off its parameters: {problem}"
    return None


def without_logprobs(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with every choice's log-probabilities taken out (as if never asked for)."""
    choices = [
        {**c, "logprobs": None} if isinstance(c, dict) else c for c in body.get("choices") or []
    ]
    return {**body, "choices": choices}
