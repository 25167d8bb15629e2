"""Cascade routing offline: confidence signals from answer texts, thresholds, replay.

A cascade answers a query with a cheap model first, scores that answer with a confidence
signal, and escalates to a stronger model only when the score is under its cluster's
threshold. This module holds the pure parts that fitting (:mod:`shoal.routing.cascade_fit`,
``shoal router fit``/``eval``) needs, all numpy and standard library, no I/O:

- **answer extraction** per task kind (:func:`answer_kind`, :func:`normalise_answer`): the
  letter of a multiple-choice answer, the last number of a numeric one, the Python function
  of a code answer (parsed, so that formatting does not matter), normalised text otherwise;
- **signals**: :func:`agreement` (how many other cheap models gave the same normalised
  answer), :func:`structure` (the answer has the shape its task asks for: a letter, a
  number, Python that parses and defines a function that returns), and a **verifier**
  (:func:`fit_logistic`, FrugalGPT's scorer made small: a logistic model of "this answer is
  right" over the query's cluster similarities and the answer's signals, fitted on train);
- **thresholds** per cluster (:func:`fit_thresholds`): the accept threshold that maximises
  ``quality - cost_weight * cost`` on calibration data, every attempt's cost counted, shrunk
  toward the threshold that is best over all clusters;
- **replay** (:func:`replay`): a cascade run over recorded per-model answers, qualities and
  costs, without calling any model.
"""

from __future__ import annotations

import ast
import functools
import io
import math
import re
import tokenize
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
AnswerKind = Literal["choice", "number", "code", "text"]

_CHOICE_TASKS = ("arc", "mmlu", "winogrand", "hellaswag", "choice", "truthfulqa", "piqa")
_NUMBER_TASKS = ("gsm8k", "math", "arithmetic", "number")
_CODE_TASKS = ("mbpp", "humaneval", "code")

_LETTER = r"([A-J])"
_CHOICE_PATTERNS = (
    re.compile(rf"^\s*\(?{_LETTER}\)?\s*(?:[.):\n]|$)"),
    re.compile(rf"(?i)\banswer\s*(?:is|:)?\s*\(?{_LETTER}\b\)?"),
    re.compile(rf"(?i)\b(?:option|choice)\s*\(?{_LETTER}\b"),
    re.compile(rf"\({_LETTER}\)"),
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TAGGED = re.compile(r"\[PYTHON\](.*?)(?:\[/PYTHON\]|\Z)", re.DOTALL | re.IGNORECASE)


def answer_kind(task: str) -> AnswerKind:
    """The kind of answer a task asks for, from its name (``arc-challenge`` -> ``choice``)."""
    t = task.lower()
    if any(k in t for k in _CODE_TASKS):
        return "code"
    if any(k in t for k in _NUMBER_TASKS):
        return "number"
    if any(k in t for k in _CHOICE_TASKS):
        return "choice"
    return "text"


def extract_choice(text: str) -> str | None:
    """The option letter an answer picks (``B``, ``(B)``, ``Answer: B``, ``B) whale``)."""
    for pattern in _CHOICE_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


def extract_number(text: str) -> str | None:
    """The answer's last number, canonical (``1,234.50`` -> ``1234.5``)."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        value = float(found[-1].replace(",", ""))
    except ValueError:
        return None
    return repr(int(value)) if value.is_integer() else repr(value)


def code_blocks(text: str) -> list[str]:
    """Candidate code in an answer: fenced blocks, ``[PYTHON]`` blocks, else the whole text."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py")]
    blocks += _TAGGED.findall(text)
    return blocks or [text]


def python_module(text: str) -> ast.Module | None:
    """The first candidate block of ``text`` that parses as Python and defines a function."""
    for block in code_blocks(text):
        try:
            with warnings.catch_warnings():  # a model's "\d" in a string is not our warning
                warnings.simplefilter("ignore")
                tree = ast.parse(block.replace("\r\n", "\n").strip("\n"))
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
        if any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(tree)):
            return tree
    return None


def extract_code(text: str) -> str | None:
    """The answer's Python (reformatted by ``ast.unparse``, comments gone), or None."""
    tree = python_module(text)
    if tree is None:
        return None
    for node in ast.walk(tree):  # docstrings are prose: two equal programs may differ there
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def normalise_answer(text: str, kind: AnswerKind) -> str | None:
    """The comparable core of an answer, or None when it has none (an unanswered query)."""
    if kind == "choice":
        return extract_choice(text)
    if kind == "number":
        return extract_number(text)
    if kind == "code":
        return extract_code(text)
    core = " ".join(text.lower().split()).rstrip(".")
    return core or None


@functools.lru_cache(maxsize=65536)
def code_tokens(code: str) -> frozenset[str]:
    """The set of Python tokens of (normalised) code, for a similarity between programs."""
    out: set[str] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING):
                out.add(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        out.update(code.split())
    return frozenset(out)


def similarity(a: str | None, b: str | None, kind: AnswerKind) -> float:
    """How far two normalised answers agree, in [0, 1]: equality, or for code the Jaccard
    similarity of their token sets (two programs rarely match character for character)."""
    if a is None or b is None:
        return 0.0
    if kind != "code":
        return 1.0 if a == b else 0.0
    ta, tb = code_tokens(a), code_tokens(b)
    union = len(ta | tb)
    return len(ta & tb) / union if union else 1.0


def agreement(answer: str | None, others: Sequence[str | None], kind: AnswerKind) -> float:
    """Mean similarity of ``answer`` to each of ``others`` (0 when it has no answer)."""
    if answer is None or not others:
        return 0.0
    return float(sum(similarity(answer, o, kind) for o in others) / len(others))


def structure(text: str, kind: AnswerKind) -> float:
    """Whether an answer has the shape its task asks for, in [0, 1].

    Choice and number: 1 when a letter / number can be read from it. Code: 1 for Python that
    parses and defines a function that returns a value, 0.5 for one that returns nothing,
    0.25 when a fenced block exists but is not Python that parses (another language, a
    fragment), 0 otherwise. Text: 1 when not empty.
    """
    if kind in ("choice", "number", "text"):
        return 0.0 if normalise_answer(text, kind) is None else 1.0
    tree = python_module(text)
    if tree is None:
        return 0.25 if _FENCE.search(text) or _TAGGED.search(text) else 0.0
    returns = any(
        isinstance(n, ast.Return | ast.Yield | ast.YieldFrom) and getattr(n, "value", None)
        for n in ast.walk(tree)
    )
    return 1.0 if returns else 0.5


# -- the verifier: a small logistic model fitted on calibration data --------------------------


@dataclass(frozen=True)
class Logistic:
    """``P(correct) = sigmoid(x @ weights + bias)`` over raw (unstandardised) features."""

    weights: F64
    bias: float

    def score(self, features: npt.NDArray[Any]) -> F64:
        """The probability that each row's answer is right."""
        z = np.asarray(features, dtype=np.float64) @ self.weights + self.bias
        out: F64 = 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))
        return out


def fit_logistic(
    features: npt.NDArray[Any], labels: npt.NDArray[Any], *, l2: float = 1.0, iters: int = 50
) -> Logistic:
    """L2-regularised logistic regression by Newton steps on standardised features.

    The standardisation is folded back into the returned weights, so :meth:`Logistic.score`
    takes the raw features. Labels are in [0, 1] (1: the answer was right).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features {x.shape} and labels {y.shape} do not match")
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    scale = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], float(l2))
    reg[-1] = 1e-6  # the intercept is not shrunk
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40.0, 40.0)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1.0 - p))[:, None]).T @ z + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    weights = w[:-1] / scale
    return Logistic(weights=weights, bias=float(w[-1] - weights @ mean))


def out_of_fold(
    features: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    *,
    folds: int = 5,
    seed: int = 0,
    l2: float = 1.0,
) -> F64:
    """Each row scored by a logistic model fitted on the other folds (honest train scores,
    for fitting thresholds on the same data the verifier learned from)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    fold = np.random.default_rng(seed).permutation(len(x)) % max(2, folds)
    out = np.zeros(len(x))
    for f in range(max(2, folds)):
        held = fold == f
        if held.any():
            out[held] = fit_logistic(x[~held], y[~held], l2=l2).score(x[held])
    return out


# -- thresholds per cluster ----------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Accept thresholds per cluster, the default (best over all clusters) and the fitted
    utility ``sum(quality - cost_weight * cost)`` per cluster at its threshold (unshrunk)."""

    per_cluster: F64
    default: float
    utility: F64
    shrunk_utility: F64


def candidate_thresholds(confidence: npt.NDArray[Any], most: int = 64) -> F64:
    """Thresholds worth trying: ``-inf`` (accept all), the distinct confidences (at most
    ``most`` quantiles of them) and ``+inf`` (escalate all), ascending."""
    c = np.unique(np.asarray(confidence, dtype=np.float64))
    if c.size > most:
        c = np.unique(np.quantile(c, np.linspace(0.0, 1.0, most)))
    out: F64 = np.concatenate([[-np.inf], c, [np.inf]])
    return out


def fit_thresholds(
    confidence: npt.NDArray[Any],
    cluster: npt.NDArray[Any],
    accept_utility: npt.NDArray[Any],
    escalate_utility: npt.NDArray[Any],
    clusters: int,
    *,
    shrinkage: float = 8.0,
    candidates: npt.NDArray[Any] | None = None,
) -> Thresholds:
    """Per cluster, the accept threshold with the highest total utility.

    Query ``i`` contributes ``accept_utility[i]`` when ``confidence[i] >= t`` and
    ``escalate_utility[i]`` otherwise (both ``quality - cost_weight * cost``, the cost of
    every call made on that path). Each cluster's curve is shrunk toward the all-cluster
    curve worth ``shrinkage`` queries, so a small cluster does not fit noise. Ties go to the
    lower threshold (accept more: cheaper). An empty cluster gets the default.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    lab = np.asarray(cluster, dtype=np.int64)
    ua = np.asarray(accept_utility, dtype=np.float64)
    ue = np.asarray(escalate_utility, dtype=np.float64)
    cand = candidate_thresholds(conf) if candidates is None else np.asarray(candidates, float)
    # Query i is accepted under candidate j exactly when j < bucket[i] (candidates ascending):
    # a histogram of the gain of accepting per (cluster, bucket) and a reversed cumulative
    # sum give every cluster's utility under every candidate in O(n + k * C).
    bucket = np.searchsorted(cand, conf, side="right")
    gain = np.zeros((clusters, cand.size + 1))
    np.add.at(gain, (lab, bucket), ua - ue)
    accepted = np.cumsum(gain[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (k, C): sum over bucket > j
    base = np.bincount(lab, weights=ue, minlength=clusters)[:, None]
    curves = base + accepted
    total = curves.sum(axis=0)
    mean_curve = total / max(1, conf.size)
    shrunk = curves + shrinkage * mean_curve[None, :]
    best = np.argmax(shrunk, axis=1)
    default = float(cand[int(np.argmax(total))])
    per_cluster = cand[best].copy()
    empty = np.bincount(lab, minlength=clusters) == 0
    per_cluster[empty] = default
    rows = np.arange(clusters)
    return Thresholds(
        per_cluster=per_cluster,
        default=default,
        utility=curves[rows, best],
        shrunk_utility=shrunk[rows, best],
    )


# -- replay ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a replayed cascade did per query: the quality and cost (every call counted) of
    its answer, which model's answer was kept, whether it escalated, how many calls it made."""

    quality: F64
    cost: F64
    answered_by: I64
    escalated: npt.NDArray[np.bool_]
    calls: I64


def replay(
    quality: npt.NDArray[Any],
    cost: npt.NDArray[Any],
    answerer: npt.NDArray[Any],
    voters: npt.NDArray[Any],
    target: npt.NDArray[Any],
    accept: npt.NDArray[Any],
) -> Outcome:
    """Run a two-stage cascade over recorded answers, without calling any model.

    ``quality`` and ``cost`` are ``(n, m)``: each model's recorded score and USD per query.
    Per query: the ``answerer`` (n,) answers, its ``voters`` ((n, m) boolean: other models
    asked at the same time for an agreement signal) are paid too, and unless ``accept`` (n,)
    the query goes on to ``target`` (n,; -1 for none, whose answer is then always kept),
    whose call is paid as well.
    """
    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    a = np.asarray(answerer, dtype=np.int64)
    v = np.asarray(voters, dtype=bool)
    t = np.asarray(target, dtype=np.int64)
    ok = np.asarray(accept, dtype=bool) | (t < 0)
    rows = np.arange(a.size)
    v = v.copy()
    v[rows, a] = False
    first_cost = c[rows, a] + (c * v).sum(axis=1)
    tt = np.where(t < 0, a, t)
    kept = np.where(ok, a, tt)
    total = first_cost + np.where(ok, 0.0, c[rows, tt])
    return Outcome(
        quality=q[rows, kept],
        cost=total,
        answered_by=kept,
        escalated=~ok,
        calls=(1 + v.sum(axis=1) + (~ok)).astype(np.int64),
    )


def frontier(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both accuracy (higher) and cost (lower), by cost."""
    ordered = sorted(points, key=lambda p: (p["cost"], -p["accuracy"]))
    out: list[dict[str, Any]] = []
    best = -math.inf
    for p in ordered:
        if p["accuracy"] > best + 1e-12:
            out.append(p)
            best = p["accuracy"]
    return out


def cheapest_at(points: Sequence[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The cheapest point whose accuracy is at least ``accuracy`` (None if none)."""
    ok = [p for p in points if p["accuracy"] >= accuracy - 1e-12]
    return min(ok, key=lambda p: p["cost"]) if ok else None


def best_within(points: Sequence[dict[str, Any]], cost: float) -> float | None:
    """The highest accuracy among points that cost at most ``cost`` (None if none)."""
    ok = [p["accuracy"] for p in points if p["cost"] <= cost + 1e-12]
    return max(ok) if ok else None


def bootstrap_cheapest(
    quality: npt.NDArray[Any],
    cost: npt.NDArray[Any],
    reference_quality: npt.NDArray[Any],
    reference_cost: npt.NDArray[Any],
    tasks: Sequence[str],
    *,
    share: float = 0.99,
    resamples: int = 300,
    seed: int = 0,
) -> F64:
    """How far "the cheapest point reaching ``share`` of the reference's accuracy" moves when
    the evaluation queries are drawn again: one figure per bootstrap resample.

    ``quality`` and ``cost`` are ``(n, P)``: per query, each operating point's score and cost;
    ``reference_quality`` and ``reference_cost`` ``(n,)`` the reference model's. Each resample
    draws the queries of every task again with replacement (as many as the task has, so
    per-task means stay comparable); its figure is the least cost, as a fraction of the
    reference's cost on that resample, of the points whose mean per-task accuracy reaches
    ``share`` of the reference's (``inf`` when none does). The spread says how much of a
    figure read on one test split is the draw of that split.
    """
    q = np.column_stack([np.asarray(reference_quality, float), np.asarray(quality, float)])
    c = np.column_stack([np.asarray(reference_cost, float), np.asarray(cost, float)])
    names = sorted(set(tasks))
    labels = np.array([names.index(t) for t in tasks])
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, q.shape[0]))
    for t in range(len(names)):
        rows = np.flatnonzero(labels == t)
        drawn = rows[rng.integers(0, rows.size, size=(resamples, rows.size))]
        for b in range(resamples):
            counts[b] += np.bincount(drawn[b], minlength=q.shape[0])
    acc = np.zeros((resamples, q.shape[1]))
    for t in range(len(names)):
        mask = labels == t
        acc += (counts[:, mask] @ q[mask]) / mask.sum()
    acc /= len(names)
    spent = counts @ c
    reached = acc[:, 1:] >= share * acc[:, [0]] - 1e-12
    fraction = np.where(reached, spent[:, 1:] / spent[:, [0]], np.inf)
    out: F64 = fraction.min(axis=1) if fraction.shape[1] else np.full(resamples, np.inf)
    return out
