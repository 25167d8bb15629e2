"""Graders of ``shoal calibrate``: how an answer is scored against a prompt's reference.

Each labelled prompt names a grader and a reference:

- ``exact`` (a string): 1 if the answer equals it, ignoring case, surrounding space and a
  final period;
- ``number`` (a number or numeric string): 1 if the answer's last number equals it
  (relative tolerance 1e-6);
- ``choice`` (a letter A-J): 1 if the answer picks it ("(B)", "Answer: B", "B. ...");
- ``regex`` (a Python regular expression): 1 if it matches anywhere in the answer;
- ``json_schema`` (a JSON Schema object): 1 if the answer, code fences stripped, is JSON
  that validates;
- ``judge`` (optional reference answer, with ``rubric`` and ``judge``, a model of the
  fleet): the judge's 0-10 mark divided by 10.

:func:`check_spec` validates a prompt's grader fields up front (so a bad regex or schema is
reported before any model is called); :func:`grade` scores one answer. Pure functions;
the judge's call is made by :mod:`shoal.routing.calibrate`, which uses :func:`judge_prompt`
and :func:`parse_judge` here.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

GRADERS = ("exact", "number", "choice", "regex", "json_schema", "judge")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_LETTER_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?(?:[.):]|\s*$)"),
    re.compile(r"\(([A-J])\)"),
)
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)
_MARK = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*10\b)?")


class GraderError(ValueError):
    """A prompt's grader or reference is unusable (the message says which and why)."""


def normalise_text(text: str) -> str:
    """Lower-cased, inner whitespace collapsed, surrounding space and final period dropped."""
    return " ".join(text.strip().lower().split()).rstrip(".").strip()


def last_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators allowed), or None."""
    found = _NUMBER.findall(text)
    for raw in reversed(found):
        try:
            return float(raw.replace(",", ""))
        except ValueError:
            continue
    return None


def chosen_letter(text: str) -> str | None:
    """The multiple-choice letter an answer picks, or None."""
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


def strip_fences(text: str) -> str:
    """The body of a Markdown code fence around the whole text, else the text."""
    m = _FENCE.match(text)
    return m.group(1) if m else text.strip()


def check_spec(grader: Any, reference: Any, rubric: Any = None, judge: Any = None) -> None:
    """Raise :class:`GraderError` unless the grader fields are usable."""
    if grader not in GRADERS:
        raise GraderError(f"grader {grader!r} is not one of {', '.join(GRADERS)}")
    if grader == "exact" and not isinstance(reference, str):
        raise GraderError("grader 'exact' needs a string reference")
    if grader == "number":
        value = reference if isinstance(reference, int | float) else None
        if isinstance(reference, str):
            value = last_number(reference)
        if isinstance(reference, bool) or value is None or not math.isfinite(float(value)):
            raise GraderError(f"grader 'number' needs a numeric reference, not {reference!r}")
    if grader == "choice" and (
        not isinstance(reference, str) or not re.fullmatch(r"[A-Ja-j]", reference.strip())
    ):
        raise GraderError(f"grader 'choice' needs a letter A-J as reference, not {reference!r}")
    if grader == "regex":
        if not isinstance(reference, str):
            raise GraderError("grader 'regex' needs a regular expression string as reference")
        try:
            re.compile(reference)
        except re.error as exc:
            raise GraderError(f"reference is not a valid regular expression: {exc}") from None
    if grader == "json_schema":
        if not isinstance(reference, dict):
            raise GraderError("grader 'json_schema' needs a JSON Schema object as reference")
        validator = _validator_class()
        try:
            validator.check_schema(reference)
        except Exception as exc:  # jsonschema.SchemaError
            raise GraderError(f"reference is not a valid JSON Schema: {exc}") from None
    if grader == "judge":
        if not isinstance(rubric, str) or not rubric.strip():
            raise GraderError("grader 'judge' needs a non-empty 'rubric'")
        if not isinstance(judge, str) or not judge:
            raise GraderError("grader 'judge' needs 'judge': the fleet model that grades")


def _validator_class() -> Any:
    import importlib

    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:  # pragma: no cover - depends on the installation
        raise GraderError(
            "grader 'json_schema' needs the jsonschema package: pip install jsonschema"
        ) from None
    return jsonschema.Draft202012Validator


def grade(grader: str, reference: Any, answer: str) -> float:
    """Score ``answer`` in [0, 1] with a non-judge grader (see the module table)."""
    if grader == "exact":
        return float(normalise_text(answer) == normalise_text(str(reference)))
    if grader == "number":
        want = float(reference) if not isinstance(reference, str) else last_number(reference)
        got = last_number(answer)
        if got is None or want is None:
            return 0.0
        return float(math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))
    if grader == "choice":
        return float(chosen_letter(answer) == str(reference).strip().upper())
    if grader == "regex":
        return float(re.search(str(reference), answer) is not None)
    if grader == "json_schema":
        try:
            doc = json.loads(strip_fences(answer))
        except json.JSONDecodeError:
            return 0.0
        return float(_validator_class()(reference).is_valid(doc))
    raise GraderError(f"grader {grader!r} cannot score an answer by itself")


def judge_prompt(rubric: str, prompt: str, answer: str, reference: Any = None) -> str:
    """The message sent to the judge model."""
    ref = "" if reference in (None, "") else f"\nReference answer:\n{reference}\n"
    return (
        "You grade answers. Rubric:\n"
        f"{rubric.strip()}\n\nQuestion:\n{prompt}\n{ref}\nAnswer to grade:\n{answer}\n\n"
        "Reply with one line 'Score: N' where N is a whole number from 0 (worst) to 10 (best)."
    )


def parse_judge(text: str) -> float | None:
    """The judge's mark as a score in [0, 1] ('Score: 7' -> 0.7), or None if it gave none."""
    m = re.search(r"score\s*[:=]?\s*(-?\d+(?:\.\d+)?)", text, re.IGNORECASE)
    m = m or _MARK.search(text)
    if not m:
        return None
    value = float(m.group(1))
    return value / 10.0 if 0.0 <= value <= 10.0 else None
