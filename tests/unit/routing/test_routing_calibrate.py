"""The calibration runner over a fake fleet endpoint (httpx's MockTransport).

A fake stands in for the fleet here only: the same path runs against a real Ray Serve fleet
of llama.cpp models in tests/integration/routing/test_calibrate_fleet.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from shoal.routing.calibrate import (
    calibration_lines,
    parse_prompts,
    run_calibration,
    summarise,
)
from shoal.routing.data import CalibrationError, parse_calibration
from shoal.routing.pricing import Price

PROMPTS = "\n".join(
    json.dumps(o)
    for o in [
        {"prompt": "What is 6 x 7?", "task": "math", "grader": "number", "reference": 42},
        {"prompt": "Pick one", "task": "mc", "grader": "choice", "reference": "B"},
        {
            "prompt": "Be nice",
            "task": "chat",
            "grader": "judge",
            "rubric": "Is it kind?",
            "judge": "b",
        },
    ]
)


class FakeFleetEndpoint:
    """Answers chat completions by model name; ``fail`` maps (model, prompt) to a failure."""

    def __init__(self, fail: dict[tuple[str, str], str] | None = None) -> None:
        self.fail = dict(fail or {})
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model, text = body["model"], body["messages"][0]["content"]
        self.calls.append((model, text))
        kind = self.fail.get((model, text))
        if kind == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        if kind == "error":
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        if text.startswith("You grade answers."):
            answer = "Score: 9"
        else:
            answer = {"a": "It is 42. The answer is (B).", "b": "41. The answer is (C)."}[model]
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            },
        )


def run(fake: FakeFleetEndpoint, calls: Path) -> dict[tuple[int, str], object]:
    prompts = parse_prompts(PROMPTS, source="p.jsonl")
    prices = {
        "a": Price(per_million_input=1.0, per_million_output=2.0),
        "b": Price(per_replica_hour=3.6),
    }
    return asyncio.run(
        run_calibration(
            "http://fleet/v1",
            prompts,
            ["a", "b"],
            prices,  # type: ignore[return-value]
            calls_path=calls,
            transport=httpx.MockTransport(fake),
        )
    )


def test_grades_prices_and_reports_failures_apart_then_resumes(tmp_path: Path) -> None:
    calls = tmp_path / "cal.jsonl.calls.jsonl"
    fake = FakeFleetEndpoint({("b", "What is 6 x 7?"): "timeout", ("a", "Pick one"): "error"})
    records = run(fake, calls)
    prompts = parse_prompts(PROMPTS, source="p.jsonl")
    lines, incomplete = calibration_lines(prompts, ["a", "b"], records, with_costs=True)  # type: ignore[arg-type]
    assert incomplete == 2 and len(lines) == 1  # a timeout and an error are not wrong answers
    judged = json.loads(lines[0])
    assert judged["scores"] == {"a": 0.9, "b": 0.9} and judged["costs"]["a"] == pytest.approx(2e-5)
    rows = {(r["model"], r["task"]): r for r in summarise(prompts, ["a", "b"], records)}  # type: ignore[arg-type]
    assert rows[("b", "math")]["timeouts"] == 1 and rows[("b", "math")]["score"] is None
    assert rows[("a", "mc")]["errors"] == 1 and rows[("a", "math")]["score"] == 1.0

    # Resume: only the two failed calls are made again.
    again = FakeFleetEndpoint()
    records = run(again, calls)
    assert sorted(again.calls) == [("a", "Pick one"), ("b", "What is 6 x 7?")]
    lines, incomplete = calibration_lines(prompts, ["a", "b"], records, with_costs=True)  # type: ignore[arg-type]
    assert incomplete == 0
    samples = parse_calibration("\n".join(lines).encode(), source="out.jsonl", fmt="jsonl")
    assert [s.scores for s in samples] == [
        {"a": 1.0, "b": 0.0},
        {"a": 1.0, "b": 0.0},
        {"a": 0.9, "b": 0.9},
    ]


def test_a_calls_file_of_another_prompt_set_is_refused(tmp_path: Path) -> None:
    calls = tmp_path / "c.calls.jsonl"
    calls.write_text(json.dumps({"calibrate": 1, "prompts_sha256": "other"}) + "\n")
    with pytest.raises(CalibrationError, match="another prompt set"):
        run(FakeFleetEndpoint(), calls)


def test_bad_prompt_rows_name_the_row() -> None:
    bad = PROMPTS + "\n" + json.dumps({"prompt": "x", "grader": "regex", "reference": "("})
    with pytest.raises(CalibrationError, match=r"p.jsonl, row 4: .*regular expression"):
        parse_prompts(bad, source="p.jsonl")
    with pytest.raises(CalibrationError, match="no labelled prompts"):
        parse_prompts("\n# nothing\n", source="p.jsonl")


def test_cli_refuses_bad_input_before_calling_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shoal.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x", "grader": "regex", "reference": "("}) + "\n")
    base = ["calibrate", "-e", "http://127.0.0.1:9/v1", "-o", str(tmp_path / "o.jsonl")]
    res = CliRunner().invoke(app, [*base, "-p", str(prompts), "--models", "a"])
    assert res.exit_code == 2 and "row 1" in res.output and "regular expression" in res.output
    prompts.write_text(PROMPTS)
    res = CliRunner().invoke(
        app, [*base, "-p", str(prompts), "--models", "a", "--token-price", "a=x"]
    )
    assert res.exit_code == 2 and "MODEL=IN:OUT" in res.output
    assert not (tmp_path / "o.jsonl").exists()
