"""The cascade's confidence signals and structural checks on OpenAI answer bodies."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from shoal.serving.cascade_signals import (
    confidence,
    logprob_margin,
    structural_problem,
    token_logprobs,
    without_logprobs,
)

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}]


def chat(
    content: str | None = "hi",
    tokens: list[tuple[float, list[float]]] | None = None,
    calls: list[dict[str, Any]] | None = None,
    finish: str = "stop",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    lp = None
    if tokens is not None:
        lp = {"content": [
            {"token": "t", "logprob": chosen,
             "top_logprobs": [{"token": "x", "logprob": v} for v in tops]}
            for chosen, tops in tokens
        ]}  # fmt: skip
    return {"choices": [{"index": 0, "message": message, "logprobs": lp, "finish_reason": finish}]}


def call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_chat_logprobs_give_mean_min_and_margin() -> None:
    body = chat(tokens=[(-0.1, [-0.1, -2.1]), (-1.0, [-1.0, -1.5]), (-0.4, [-0.4, -3.4])])
    assert confidence("logprob_mean", body) == pytest.approx(-0.5)
    assert confidence("logprob_min", body) == pytest.approx(-1.0)
    assert confidence("logprob_margin", body) == pytest.approx((2.0 + 0.5 + 3.0) / 3)


def test_candidates_are_ordered_whatever_order_the_engine_lists_them() -> None:
    body = chat(tokens=[(-2.0, [-2.0, -0.5])])  # the chosen token was not the likeliest
    assert confidence("logprob_margin", body) == pytest.approx(1.5)


def test_completion_logprobs_are_read_too() -> None:
    body = {"choices": [{"text": "ab", "finish_reason": "stop", "logprobs": {
        "tokens": ["a", "b"], "token_logprobs": [-0.2, -0.6],
        "top_logprobs": [{"a": -0.2, "c": -1.2}, {"b": -0.6, "d": -0.9}],
    }}]}  # fmt: skip
    assert confidence("logprob_mean", body) == pytest.approx(-0.4)
    assert confidence("logprob_margin", body) == pytest.approx((1.0 + 0.3) / 2)


def test_no_logprobs_gives_no_confidence() -> None:
    assert confidence("logprob_mean", chat()) is None
    assert token_logprobs({"choices": []}) is None
    assert confidence("logprob_margin", chat(tokens=[(-0.3, [])])) is None
    assert logprob_margin([]) is None


def test_non_finite_logprobs_are_skipped() -> None:
    body = chat(tokens=[(-math.inf, []), (-0.5, [])])
    assert confidence("logprob_min", body) == pytest.approx(-0.5)


def test_an_unknown_signal_is_an_error() -> None:
    with pytest.raises(ValueError, match="verifier"):
        confidence("verifier", chat(tokens=[(-0.1, [])]))


def test_a_valid_tool_call_passes() -> None:
    body = chat(None, calls=[call("get_weather", json.dumps({"city": "Paris"}))])
    assert structural_problem({"tools": TOOLS}, body) is None


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"city": "Llanfairpwllgwyngyll"}), "too long"),
        (json.dumps({"town": "Paris"}), "city"),
    ],
)
def test_a_tool_call_off_its_parameters_is_a_problem(arguments: str, needle: str) -> None:
    body = chat(None, calls=[call("get_weather", arguments)])
    problem = structural_problem({"tools": TOOLS}, body)
    assert problem is not None and needle in problem


def test_an_unknown_function_and_a_missing_required_call_are_problems() -> None:
    unknown = structural_problem({"tools": TOOLS}, chat(None, calls=[call("launch", "{}")]))
    assert unknown is not None and "unknown function" in unknown
    missing = structural_problem({"tools": TOOLS, "tool_choice": "required"}, chat("sunny"))
    assert missing is not None and "required a tool call" in missing
    assert structural_problem({"tools": TOOLS, "tool_choice": "auto"}, chat("sunny")) is None


def test_json_schema_answers_are_validated() -> None:
    fmt = {"response_format": {"type": "json_schema", "json_schema": {"schema": CITY}}}
    assert structural_problem(fmt, chat(json.dumps({"city": "Rome"}))) is None
    problem = structural_problem(fmt, chat(json.dumps({"city": 3})))
    assert problem is not None and "response_format" in problem
    assert structural_problem({"response_format": {"type": "json_object"}}, chat("[1]"))


def test_a_cut_structured_answer_is_a_problem_and_a_cut_text_is_not() -> None:
    fmt = {"response_format": {"type": "json_object"}}
    assert structural_problem(fmt, chat('{"a": ', finish="length")) is not None
    assert structural_problem({}, chat("hel", finish="length")) is None  # the client's max_tokens
    assert structural_problem({}, chat("hello")) is None


def test_logprobs_are_taken_out_for_a_client_that_did_not_ask() -> None:
    body = chat(tokens=[(-0.1, [])])
    out = without_logprobs(body)
    assert out["choices"][0]["logprobs"] is None
    assert out["choices"][0]["message"] == body["choices"][0]["message"]
    assert body["choices"][0]["logprobs"] is not None  # the input is left alone
