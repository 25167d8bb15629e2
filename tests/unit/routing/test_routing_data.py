"""Calibration loaders: the three formats and their error messages (file and row named)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.routing.data import (
    CalibrationError,
    detect_format,
    load_calibration,
    parse_calibration,
    task_from_name,
)

CSV_HEADER = ",sample_id,prompt,eval_name,m1,m2,m1|model_response,m2|model_response,m1|total_cost,m2|total_cost,oracle_model_to_route_to"


def jsonl(*rows: object) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def row(prompt: str = "q", **extra: object) -> dict[str, object]:
    return {"prompt": prompt, "scores": {"a": 1.0, "b": 0.0}, **extra}


# --- JSONL ---------------------------------------------------------------------------------


def test_jsonl_reads_prompt_task_scores_and_costs() -> None:
    data = jsonl(
        row("what is 2+2", task="math", costs={"a": 0.01, "b": 0.001}),
        row("capital of France", task="geo", costs={"a": 0.02, "b": 0.0}),
    )
    samples = parse_calibration(b"# comment\n\n" + data, source="cal.jsonl")
    assert [s.prompt for s in samples] == ["what is 2+2", "capital of France"]
    assert samples[0].task == "math"
    assert dict(samples[0].scores) == {"a": 1.0, "b": 0.0}
    assert dict(samples[1].costs) == {"a": 0.02, "b": 0.0}
    assert samples[1].origin == "cal.jsonl:4"


def test_jsonl_costs_are_optional() -> None:
    (s,) = parse_calibration(jsonl(row()), source="c.jsonl")
    assert dict(s.costs) == {} and s.task == ""


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "row 2: not valid JSON"),
        ("[1, 2]", "row 2: each line must be a JSON object"),
        ('{"scores": {"a": 1, "b": 0}}', "row 2: missing or empty 'prompt'"),
        ('{"prompt": "  ", "scores": {"a": 1, "b": 0}}', "row 2: missing or empty 'prompt'"),
        ('{"prompt": "x"}', "row 2: missing 'scores'"),
        ('{"prompt": "x", "scores": {}}', "row 2: 'scores' is empty"),
        ('{"prompt": "x", "scores": [1, 0]}', "row 2: 'scores' must be an object"),
        ('{"prompt": "x", "scores": {"a": NaN, "b": 0}}', "row 2: scores\\['a'\\] is 'NaN'|is nan"),
        ('{"prompt": "x", "scores": {"a": null, "b": 0}}', "row 2: scores\\['a'\\] is empty"),
        ('{"prompt": "x", "scores": {"a": "", "b": 0}}', "row 2: scores\\['a'\\] is empty"),
        (
            '{"prompt": "x", "scores": {"a": "high", "b": 0}}',
            "row 2: scores\\['a'\\] is not a number",
        ),
        (
            '{"prompt": "x", "scores": {"a": 1.5, "b": 0}}',
            "row 2: scores\\['a'\\] = 1.5 is outside",
        ),
        ('{"prompt": "x", "scores": {"a": true, "b": 0}}', "row 2: scores\\['a'\\] is empty"),
        (
            '{"prompt": "x", "scores": {"a": 1, "c": 0}}',
            "row 2: model set differs.*unknown models \\['c'\\].*no score for \\['b'\\]",
        ),
        (
            '{"prompt": "x", "scores": {"a": 1, "b": 0}, "costs": {"a": -1, "b": 0}}',
            "row 2: costs\\['a'\\] = -1.0 is negative",
        ),
        (
            '{"prompt": "x", "scores": {"a": 1, "b": 0}, "costs": {"a": 1, "z": 0}}',
            "row 2: 'costs' must name the same models.*unknown models in costs: \\['z'\\].*no cost for: \\['b'\\]",
        ),
        (
            '{"prompt": "x", "scores": {"a": 1, "b": 0}, "task": 3}',
            "row 2: 'task' must be a string",
        ),
    ],
)
def test_jsonl_errors_name_file_and_row(line: str, message: str) -> None:
    data = jsonl(row()) + b"\n" + line.encode()
    with pytest.raises(CalibrationError, match=f"^cal.jsonl, {message}"):
        parse_calibration(data, source="cal.jsonl")


def test_jsonl_mixed_costs_are_refused() -> None:
    data = jsonl(row(costs={"a": 1.0, "b": 0.5}), row())
    with pytest.raises(CalibrationError, match="row 2: costs are given for some samples"):
        parse_calibration(data, source="cal.jsonl")


@pytest.mark.parametrize("data", [b"", b"   \n\n", b"# only a comment\n"])
def test_empty_files_are_refused(data: bytes) -> None:
    with pytest.raises(CalibrationError, match=r"^empty\.jsonl: (empty file|no samples)"):
        parse_calibration(data, source="empty.jsonl")


def test_non_utf8_is_refused() -> None:
    with pytest.raises(CalibrationError, match=r"bad\.jsonl: not UTF-8"):
        parse_calibration(b"\xff\xfe\x00", source="bad.jsonl")


# --- RouterDC JSON ---------------------------------------------------------------------------


def test_routerdc_json_takes_task_from_file_name() -> None:
    data = json.dumps([{"question": "q1", "scores": {"a": 0.5, "b": 1}, "cluster_id": 3}]).encode()
    (s,) = parse_calibration(data, source="data/gsm8k-test.json")
    assert s.task == "gsm8k" and s.prompt == "q1" and s.origin == "data/gsm8k-test.json:0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"question": "q"}', "must be a JSON list"),
        (b"[1]", "row 0: each item must be a JSON object"),
        (
            b'[{"question": "q", "scores": {"a": 1}}, {"scores": {"a": 1}}]',
            "row 1: missing or empty 'question'",
        ),
        (b"[", "row 1: not valid JSON"),
        (b"[]", "no samples"),
    ],
)
def test_routerdc_errors(data: bytes, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        parse_calibration(data, source="mmlu_train.json")


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("mmlu_train.json", "mmlu"),
        ("gsm8k-test.json", "gsm8k"),
        ("/x/arc_challenge_test.csv", "arc_challenge"),
        ("mine.jsonl", "mine"),
    ],
)
def test_task_from_name(name: str, task: str) -> None:
    assert task_from_name(name) == task


# --- RouterBench CSV -------------------------------------------------------------------------


def csv_bytes(*lines: str, header: str = CSV_HEADER) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


def test_routerbench_csv_reads_scores_costs_and_prompt_turns() -> None:
    data = csv_bytes(
        "0,id0,\"['first turn', 'second turn']\",mbpp,1.0,0.0,x,y,0.002,0.0001,m1",
        "1,id1,plain prompt,mbpp,0.0,1.0,x,y,0.003,0.0002,m2",
    )
    a, b = parse_calibration(data, source="mbpp_test.csv")
    assert a.prompt == "first turn\n\nsecond turn"
    assert a.task == "mbpp" and dict(a.scores) == {"m1": 1.0, "m2": 0.0}
    assert dict(a.costs) == {"m1": 0.002, "m2": 0.0001}
    assert b.prompt == "plain prompt" and b.origin == "mbpp_test.csv:3"


def test_routerbench_empty_score_cell_reads_as_zero() -> None:
    data = csv_bytes("0,id0,q,arc,,1.0,x,y,0.1,0.2,m2")
    (s,) = parse_calibration(data, source="arc.csv")
    assert dict(s.scores) == {"m1": 0.0, "m2": 1.0}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            csv_bytes(
                "0,id,q,t,1,0,x,y,0.1,0.1,m", header=CSV_HEADER.replace(",prompt,", ",text,")
            ),
            "row 1: missing column 'prompt'",
        ),
        (
            csv_bytes("0,q,1,0.1", header=",prompt,m1,other"),
            "row 1: no '<model>\\|total_cost' columns",
        ),
        (
            csv_bytes("0,q,0.1", header=",prompt,m1|total_cost"),
            "row 1: missing score columns for models: \\['m1'\\]",
        ),
        (csv_bytes("0,id0,q,t,nan,0,x,y,0.1,0.1,m"), "row 2: score of 'm1' is 'nan'"),
        (csv_bytes("0,id0,q,t,yes,0,x,y,0.1,0.1,m"), "row 2: score of 'm1' is not a number"),
        (csv_bytes("0,id0,q,t,1,0,x,y,,0.1,m"), "row 2: cost of 'm1' is empty"),
        (
            csv_bytes("0,id0,q,t,1,0,x,y,0.1,0.1,m", "1,id1,q,t,1,0"),
            "row 3: has 6 cells, the header has 11",
        ),
        (csv_bytes("0,id0,,t,1,0,x,y,0.1,0.1,m"), "row 2: empty prompt"),
        (csv_bytes('0,id0,"[\'unclosed",t,1,0,x,y,0.1,0.1,m'), None),
        (
            csv_bytes('0,id0,"[1 2]",t,1,0,x,y,0.1,0.1,m'),
            "row 2: prompt looks like a list but does not parse",
        ),
        (b"", "empty file"),
    ],
)
def test_routerbench_errors(data: bytes, message: str | None) -> None:
    if message is None:  # a prompt that merely starts with "[" is kept as text
        (s,) = parse_calibration(data, source="rb.csv")
        assert s.prompt == "['unclosed"
        return
    with pytest.raises(CalibrationError, match=f"^rb.csv[:,] {message}"):
        parse_calibration(data, source="rb.csv")


# --- several files ---------------------------------------------------------------------------


def test_load_calibration_checks_model_sets_across_files(tmp_path: Path) -> None:
    first = tmp_path / "one.jsonl"
    second = tmp_path / "two.jsonl"
    first.write_bytes(jsonl(row(), row()))
    second.write_bytes(jsonl({"prompt": "x", "scores": {"a": 1.0, "c": 0.5}}))
    with pytest.raises(
        CalibrationError, match=f"^{second}, row 1: model set differs from {first}:1"
    ):
        load_calibration([first, second])


def test_load_calibration_reads_all_files_in_order(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b_test.json"
    a.write_bytes(jsonl(row("one")))
    b.write_text(json.dumps([{"question": "two", "scores": {"a": 0, "b": 1}}]))
    samples = load_calibration([a, b])
    assert [(s.prompt, s.task) for s in samples] == [("one", ""), ("two", "b")]


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"nope\.jsonl: cannot read"):
        load_calibration([tmp_path / "nope.jsonl"])


def test_no_files() -> None:
    with pytest.raises(CalibrationError, match="no calibration files"):
        load_calibration([])


@pytest.mark.parametrize(
    ("name", "data", "fmt"),
    [
        ("x.jsonl", b"{}", "jsonl"),
        ("x.csv", b"a,b", "routerbench"),
        ("x.json", b"[]", "routerdc"),
        ("configmap-key", b"  [", "routerdc"),
        ("configmap-key", b'{"prompt"', "jsonl"),
        ("configmap-key", b"prompt,a", "routerbench"),
    ],
)
def test_detect_format(name: str, data: bytes, fmt: str) -> None:
    assert detect_format(name, data) == fmt


def test_recorded_answers_are_read_from_routerbench_and_jsonl() -> None:
    from shoal.routing.data import parse_calibration

    csv_text = (
        "prompt,eval_name,a,b,a|model_response,b|model_response,a|total_cost,b|total_cost\n"
        "\"['q1']\",arc,1,0,\"['A\\n']\",\"['B']\",0.1,0.2\n"
        "\"['q2']\",arc,1,,not a list,\"['x', 'y']\",0.1,0.2\n"
    )
    rows = parse_calibration(csv_text, source="rb.csv")
    assert rows[0].answers == {"a": "A\n", "b": "B"}
    assert rows[1].answers == {"a": "not a list", "b": "x\ny"}
    line = '{"prompt": "p", "scores": {"a": 1}, "answers": {"a": "yes"}}\n'
    assert parse_calibration(line, source="c.jsonl")[0].answers == {"a": "yes"}
    bad = '{"prompt": "p", "scores": {"a": 1}, "answers": {"z": "yes"}}\n'
    with pytest.raises(CalibrationError, match=r"c\.jsonl, row 1: 'answers' must be"):
        parse_calibration(bad, source="c.jsonl")
