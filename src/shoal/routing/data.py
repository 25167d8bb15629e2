"""Calibration data loaders: prompts with per-model quality (and cost) from files.

Three formats, detected from the file name or passed explicitly:

- ``jsonl``: Shoal's own format, one JSON object per line:
  ``{"prompt": str, "task": str (optional), "scores": {model: quality in [0, 1]},
  "costs": {model: USD} (optional), "answers": {model: answer text} (optional)}``.
  Blank lines and lines starting with ``#`` are skipped.
- ``routerdc``: a JSON list of ``{"question": str, "scores": {model: float}}`` (RouterDC);
  the task is the file name without its split suffix (``gsm8k-test.json`` -> ``gsm8k``).
- ``routerbench``: RouterBench CSV: ``prompt`` (a Python-literal list of turns),
  ``eval_name``, one score column per model and ``<model>|total_cost``. An empty score cell
  means the source recorded no gradable answer and reads as 0, the convention behind the
  source's published accuracies; any other unreadable cell is an error. The optional
  ``<model>|model_response`` columns (a Python-literal list holding the answer text) become
  :attr:`Sample.answers`, which cascades are replayed from.

Every problem raises :class:`CalibrationError` naming the file and the row (1-based line for
JSONL and CSV, 0-based list index for JSON). All files loaded together must score the same set
of models. Pure parsing: :func:`parse_calibration` takes bytes, :func:`load_calibration`
reads files.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from shoal.routing.types import Sample

Format = Literal["jsonl", "routerdc", "routerbench"]
_SPLIT_SUFFIX = re.compile(r"[-_.](train|test|dev|val|valid|validation)$", re.IGNORECASE)
_COST_SUFFIX = "|total_cost"
_ANSWER_SUFFIX = "|model_response"


class CalibrationError(ValueError):
    """Calibration data is unusable; the message names the file and row."""

    def __init__(self, source: str, row: int | str | None, message: str) -> None:
        where = source if row is None else f"{source}, row {row}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.row = row


def task_from_name(name: str) -> str:
    """The task a file holds, from its name: ``mmlu_train.json`` -> ``mmlu``."""
    stem = Path(name).name.split(".")[0] if "." in Path(name).name else Path(name).name
    return _SPLIT_SUFFIX.sub("", stem)


def detect_format(name: str, data: bytes) -> Format:
    """Guess the format from the file suffix, else from the first non-blank byte."""
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".csv"):
        return "routerbench"
    if lower.endswith(".json"):
        return "routerdc"
    head = data.lstrip()[:1]
    if head == b"[":
        return "routerdc"
    if head == b"{":
        return "jsonl"
    return "routerbench"


def _number(source: str, row: int | str, what: str, value: Any, *, unit: bool) -> float:
    if isinstance(value, bool) or value is None or value == "":
        raise CalibrationError(source, row, f"{what} is empty (need a number)")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(source, row, f"{what} is not a number: {value!r}") from None
    if not math.isfinite(x):
        raise CalibrationError(source, row, f"{what} is {value!r} (need a finite number)")
    if unit and not 0.0 <= x <= 1.0:
        raise CalibrationError(source, row, f"{what} = {x} is outside [0, 1]")
    if not unit and x < 0:
        raise CalibrationError(source, row, f"{what} = {x} is negative")
    return x


def _score_map(source: str, row: int | str, raw: Any, what: str, *, unit: bool) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise CalibrationError(source, row, f"'{what}' must be an object {{model: number}}")
    if not raw:
        raise CalibrationError(source, row, f"'{what}' is empty (no models)")
    out = {}
    for model, value in raw.items():
        if not isinstance(model, str) or not model:
            raise CalibrationError(source, row, f"'{what}' has an empty model name")
        out[model] = _number(source, row, f"{what}[{model!r}]", value, unit=unit)
    return out


def _jsonl(source: str, text: str) -> list[Sample]:
    samples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(source, lineno, f"not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise CalibrationError(source, lineno, "each line must be a JSON object")
        samples.append(_from_object(source, lineno, obj, prompt_key="prompt", task=""))
    return samples


def _from_object(
    source: str, row: int, obj: dict[str, Any], *, prompt_key: str, task: str
) -> Sample:
    prompt = obj.get(prompt_key)
    if not isinstance(prompt, str) or not prompt.strip():
        raise CalibrationError(source, row, f"missing or empty '{prompt_key}' (need a string)")
    if "scores" not in obj:
        raise CalibrationError(source, row, "missing 'scores' {model: quality in [0, 1]}")
    scores = _score_map(source, row, obj["scores"], "scores", unit=True)
    costs: dict[str, float] = {}
    if obj.get("costs") is not None:
        costs = _score_map(source, row, obj["costs"], "costs", unit=False)
        if set(costs) != set(scores):
            extra = sorted(set(costs) - set(scores))
            missing = sorted(set(scores) - set(costs))
            raise CalibrationError(
                source,
                row,
                "'costs' must name the same models as 'scores'"
                + (f"; unknown models in costs: {extra}" if extra else "")
                + (f"; no cost for: {missing}" if missing else ""),
            )
    t = obj.get("task", task)
    if t is not None and not isinstance(t, str):
        raise CalibrationError(source, row, f"'task' must be a string, not {type(t).__name__}")
    answers = obj.get("answers") or {}
    if not isinstance(answers, Mapping) or not all(
        isinstance(m, str) and m in scores and isinstance(a, str) for m, a in answers.items()
    ):
        raise CalibrationError(
            source, row, "'answers' must be an object {model: answer text} of scored models"
        )
    return Sample(
        prompt=prompt,
        scores=scores,
        task=t or task,
        costs=costs,
        origin=f"{source}:{row}",
        answers=dict(answers),
    )


def _routerdc(source: str, text: str) -> list[Sample]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(source, exc.lineno, f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise CalibrationError(source, None, "RouterDC data must be a JSON list of objects")
    task = task_from_name(source)
    samples = []
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise CalibrationError(source, i, "each item must be a JSON object")
        samples.append(_from_object(source, i, obj, prompt_key="question", task=task))
    return samples


def _prompt_text(source: str, row: int, raw: str) -> str:
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            turns = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise CalibrationError(
                source, row, "prompt looks like a list but does not parse"
            ) from None
        if isinstance(turns, list) and all(isinstance(t, str) for t in turns):
            text = "\n\n".join(turns)
    if not text:
        raise CalibrationError(source, row, "empty prompt")
    return text


def _answer_text(raw: str) -> str:
    """An answer cell: RouterBench writes a Python-literal list of one string; anything that
    is not such a list is kept as it is (an unreadable answer is no answer, never an error)."""
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
    return text


def _routerbench(source: str, text: str) -> list[Sample]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CalibrationError(source, None, "empty file (no header row)") from None
    except csv.Error as exc:
        raise CalibrationError(source, 1, f"bad CSV: {exc}") from None
    cols = {name: i for i, name in enumerate(header)}
    if "prompt" not in cols:
        raise CalibrationError(source, 1, "missing column 'prompt'")
    models = [c[: -len(_COST_SUFFIX)] for c in header if c.endswith(_COST_SUFFIX)]
    if not models:
        raise CalibrationError(source, 1, "no '<model>|total_cost' columns")
    missing = [m for m in models if m not in cols]
    if missing:
        raise CalibrationError(source, 1, f"missing score columns for models: {missing}")
    task_default = task_from_name(source)
    answer_cols = [m for m in models if m + _ANSWER_SUFFIX in cols]
    samples = []
    try:
        for line, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise CalibrationError(
                    source, line, f"has {len(cells)} cells, the header has {len(header)}"
                )
            prompt = _prompt_text(source, line, cells[cols["prompt"]])
            scores = {}
            costs = {}
            for m in models:
                cell = cells[cols[m]].strip()
                scores[m] = (
                    0.0 if cell == "" else _number(source, line, f"score of {m!r}", cell, unit=True)
                )
                costs[m] = _number(
                    source,
                    line,
                    f"cost of {m!r}",
                    cells[cols[m + _COST_SUFFIX]].strip(),
                    unit=False,
                )
            task = cells[cols["eval_name"]].strip() if "eval_name" in cols else ""
            answers = {m: _answer_text(cells[cols[m + _ANSWER_SUFFIX]]) for m in answer_cols}
            samples.append(
                Sample(
                    prompt=prompt,
                    scores=scores,
                    task=task or task_default,
                    costs=costs,
                    origin=f"{source}:{line}",
                    answers=answers,
                )
            )
    except csv.Error as exc:
        raise CalibrationError(source, reader.line_num, f"bad CSV: {exc}") from None
    return samples


def parse_calibration(data: bytes | str, *, source: str, fmt: Format | None = None) -> list[Sample]:
    """Parse one calibration file's contents (for example a ConfigMap value).

    ``source`` names the data in error messages and gives RouterDC files their task.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalibrationError(
            source, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    if not text.strip():
        raise CalibrationError(source, None, "empty file (no samples)")
    kind = fmt or detect_format(source, raw)
    parser = {"jsonl": _jsonl, "routerdc": _routerdc, "routerbench": _routerbench}[kind]
    samples = parser(source, text)
    if not samples:
        raise CalibrationError(source, None, "no samples")
    check_consistent([(source, samples)])
    return samples


def check_consistent(groups: Iterable[tuple[str, Sequence[Sample]]]) -> list[str]:
    """Every sample scores the same models, and costs are given everywhere or nowhere.

    Returns the model list (in first-seen order). Raises :class:`CalibrationError` at the
    first sample that disagrees with the first one, naming its file and row.
    """
    models: list[str] | None = None
    ref_origin = ""
    with_costs: bool | None = None
    for source, samples in groups:
        for i, s in enumerate(samples):
            row: int | str = s.origin.rsplit(":", 1)[-1] if s.origin else i
            if models is None:
                models, ref_origin, with_costs = list(s.scores), s.origin or source, bool(s.costs)
                continue
            if set(s.scores) != set(models):
                unknown = sorted(set(s.scores) - set(models))
                absent = sorted(set(models) - set(s.scores))
                parts = []
                if unknown:
                    parts.append(f"unknown models {unknown}")
                if absent:
                    parts.append(f"no score for {absent}")
                raise CalibrationError(
                    source,
                    row,
                    f"model set differs from {ref_origin}: " + "; ".join(parts),
                )
            if bool(s.costs) != with_costs:
                raise CalibrationError(
                    source,
                    row,
                    "costs are given for some samples but not others "
                    f"(first sample {ref_origin} {'has' if with_costs else 'has no'} costs)",
                )
    return models or []


def load_calibration(paths: Sequence[str | Path], *, fmt: Format | None = None) -> list[Sample]:
    """Read and validate calibration files; all must score the same models."""
    if not paths:
        raise CalibrationError("<no files>", None, "no calibration files given")
    groups = []
    for p in paths:
        path = Path(p)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CalibrationError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
        groups.append((str(path), parse_calibration(data, source=str(path), fmt=fmt)))
    check_consistent(groups)
    return [s for _, samples in groups for s in samples]
