"""Graders and pricing of ``shoal calibrate`` (pure functions)."""

from __future__ import annotations

import pytest

from shoal.api.v1alpha1 import ModelFleet
from shoal.routing.graders import (
    GraderError,
    check_spec,
    chosen_letter,
    grade,
    judge_prompt,
    last_number,
    parse_judge,
)
from shoal.routing.pricing import Price, fleet_prices, parse_token_price


def test_exact_ignores_case_space_and_final_period() -> None:
    assert grade("exact", "Paris", "  paris. ") == 1.0
    assert grade("exact", "Paris", "Paris, France") == 0.0


@pytest.mark.parametrize(
    ("answer", "want"),
    [("The answer is 1,234.", 1234.0), ("#### 42", 42.0), ("x = -3.5", -3.5), ("none", None)],
)
def test_last_number(answer: str, want: float | None) -> None:
    assert last_number(answer) == want


def test_number_grader_takes_the_last_number() -> None:
    assert grade("number", 72, "48 + 24 = 72") == 1.0
    assert grade("number", "72", "It is 72.0") == 1.0
    assert grade("number", 72, "72 apples, no wait, 73") == 0.0
    assert grade("number", 5, "no number here") == 0.0


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("The answer is (C).", "C"),
        ("B. Because...", "B"),
        ("Answer: d", "D"),
        ("I pick (A) here", "A"),
        ("no idea", None),
    ],
)
def test_chosen_letter(answer: str, letter: str | None) -> None:
    assert chosen_letter(answer) == letter


def test_choice_regex_and_json_schema_graders() -> None:
    assert grade("choice", "c", "The answer is (C)") == 1.0
    assert grade("choice", "B", "The answer is (C)") == 0.0
    assert grade("regex", r"^Math specialist", "Math specialist: 42") == 1.0
    assert grade("regex", r"(?i)code", "Chat specialist") == 0.0
    schema = {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}}
    assert grade("json_schema", schema, '```json\n{"x": 3}\n```') == 1.0
    assert grade("json_schema", schema, '{"x": "3"}') == 0.0
    assert grade("json_schema", schema, "not json") == 0.0


@pytest.mark.parametrize(
    ("grader", "reference", "message"),
    [
        ("fuzzy", "x", "not one of"),
        ("regex", "(", "not a valid regular expression"),
        ("choice", "AB", "letter A-J"),
        ("number", "many", "numeric reference"),
        ("number", True, "numeric reference"),
        ("json_schema", {"type": 5}, "not a valid JSON Schema"),
        ("exact", 3, "string reference"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(
    grader: str, reference: object, message: str
) -> None:
    with pytest.raises(GraderError, match=message):
        check_spec(grader, reference)


def test_judge_needs_rubric_and_model_and_its_mark_is_parsed() -> None:
    with pytest.raises(GraderError, match="rubric"):
        check_spec("judge", None, None, "chat")
    with pytest.raises(GraderError, match="'judge'"):
        check_spec("judge", None, "Is it polite?", None)
    check_spec("judge", None, "Is it polite?", "chat")
    assert "Is it polite?" in judge_prompt("Is it polite?", "q", "a", "ref")
    assert parse_judge("Score: 7") == 0.7 and parse_judge("8/10") == 0.8
    assert parse_judge("I cannot grade this") is None and parse_judge("Score: 42") is None
    with pytest.raises(GraderError):
        grade("judge", None, "answer")


def test_prices_from_tiers_and_tokens() -> None:
    fleet = ModelFleet.model_validate(
        {
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "ModelFleet",
            "metadata": {"name": "f"},
            "spec": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "small", "costPerReplicaHour": "0.36"}],
                "models": [{"name": "m", "tier": "small", "source": "hf://org/m"}],
            },
        }
    )
    prices = fleet_prices(fleet.spec)
    assert prices["m"].cost(10.0, 100, 50) == pytest.approx(0.001)  # 0.36 $/h for 10 s
    model, price = parse_token_price("gpt=2.5:10")
    assert model == "gpt" and price.cost(99.0, 1000, 100) == pytest.approx(0.0035)
    assert Price().cost(1.0, 1, 1) == 0.0
    for bad in ("gpt", "gpt=1", "gpt=a:b", "gpt=-1:2"):
        with pytest.raises(ValueError, match="token price"):
            parse_token_price(bad)
