"""Tool calls through a JSON-schema grammar, read back and checked; JSON answers checked
against the client's schema (shoal.serving.structured)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.serving.structured import (
    StructuredError,
    plain_messages,
    response_schema,
    schema_violation,
    tool_plan,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green"]},
    },
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": CITY}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a city"}},
]


def test_a_valid_answer_passes() -> None:
    assert schema_violation(PERSON, '{"name": "Ada", "age": 36, "color": "red"}') is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"name": "Ada", "age": 794527181, "color": "red"}', "maximum"),
        ('{"name": "Ada\n", "age": 3', "not valid JSON"),  # a raw control character, cut
        ('{"name": "Ada", "age": 3, "color": "red", "x": 1}', "Additional properties"),
        ('{"name": "Ada", "age": 3}', "color"),
        ('{"name": "Ada", "age": 3, "color": "blue"}', "is not one of"),
        ('{"name": "Adalbertus Magnus", "age": 3, "color": "red"}', "too long"),
    ],
)
def test_answers_off_the_schema_are_named(text: str, needle: str) -> None:
    problem = schema_violation(PERSON, text)
    assert problem is not None and needle in problem


def test_response_schema_of_a_request() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": PERSON}}
    assert response_schema({"response_format": fmt}) == PERSON
    assert response_schema({"response_format": {"type": "json_object"}}) is None
    assert response_schema({}) is None


def test_no_plan_without_tools_or_with_none() -> None:
    assert tool_plan({}) is None
    assert tool_plan({"tools": TOOLS, "tool_choice": "none"}) is None


def test_a_named_function_is_answered_with_its_arguments() -> None:
    plan = tool_plan({"tools": TOOLS, "tool_choice": {"type": "function",
                                                      "function": {"name": "get_weather"}}})  # fmt: skip
    assert plan is not None and plan.schema == CITY and not plan.may_answer
    text, calls = plan.parse('{"city": "Paris"}')
    assert text is None and len(calls) == 1
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    with pytest.raises(StructuredError, match="off its parameters"):
        plan.parse('{"town": "Paris"}')


def test_a_named_function_that_is_not_a_tool_is_refused() -> None:
    with pytest.raises(StructuredError, match="not among the tools"):
        tool_plan({"tools": TOOLS, "tool_choice": {"type": "function",
                                                   "function": {"name": "nope"}}})  # fmt: skip


def test_required_picks_one_function_by_name() -> None:
    plan = tool_plan({"tools": TOOLS, "tool_choice": "required"})
    assert plan is not None and not plan.may_answer
    names = [o["properties"]["name"]["const"] for o in plan.schema["anyOf"]]
    assert names == ["get_weather", "get_time"]
    _, calls = plan.parse('{"name": "get_time", "arguments": {}}')
    assert calls[0]["function"]["name"] == "get_time"
    with pytest.raises(StructuredError):
        plan.parse('{"answer": "no"}')  # required: an answer in text is off the plan


def test_auto_may_answer_in_text() -> None:
    plan = tool_plan({"tools": TOOLS, "tool_choice": "auto"})
    assert plan is not None and plan.may_answer
    assert plan.parse('{"answer": "It is sunny."}') == ("It is sunny.", [])
    _, calls = plan.parse('{"name": "get_weather", "arguments": {"city": "Rome"}}')
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}
    assert "get_weather" in plan.system and "get_time" in plan.system


def test_parallel_calls_come_as_a_list() -> None:
    plan = tool_plan({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": True})
    assert plan is not None
    _, calls = plan.parse(
        '{"calls": [{"name": "get_weather", "arguments": {"city": "Rome"}},'
        ' {"name": "get_time", "arguments": {}}]}'
    )
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert len({c["id"] for c in calls}) == 2


def test_tool_turns_become_text_for_plain_templates() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    out = plain_messages(messages)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[2]["content"] == 'Called get_weather({"city": "Rome"})'
    assert out[3]["content"] == "get_weather returned: sunny"
