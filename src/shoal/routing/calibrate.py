"""``shoal calibrate``: calibration data made by running the fleet itself.

Every labelled prompt (JSONL: ``prompt``, ``task``, ``grader``, ``reference``, and for the
judge ``rubric`` and ``judge``; see :mod:`shoal.routing.graders`) is sent to every model of a
fleet endpoint *by name* (``model: <name>`` bypasses the router), with bounded concurrency.
Each answer is graded, timed, its tokens recorded and priced (:mod:`shoal.routing.pricing`).

Every call's outcome is appended to a *calls file* (``<out>.calls.jsonl``) as soon as it is
known, so an interrupted run resumes where it stopped: answered calls are kept, errors and
timeouts are tried again. Errors and timeouts are never graded as wrong answers: a prompt
enters the calibration JSONL only when every model answered it, and the summary counts the
others apart. The I/O (HTTP, the calls file) is here; grading and pricing are pure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shoal.routing.data import CalibrationError
from shoal.routing.graders import GraderError, check_spec, grade, judge_prompt, parse_judge
from shoal.routing.pricing import Price

CALLS_VERSION = 1


@dataclass(frozen=True)
class LabelledPrompt:
    """One prompt of the labelled set, with how its answers are graded."""

    row: int
    prompt: str
    task: str
    grader: str
    reference: Any
    rubric: str | None = None
    judge: str | None = None


def parse_prompts(text: str, *, source: str) -> list[LabelledPrompt]:
    """Parse the labelled prompt set (JSONL); raise :class:`CalibrationError` naming the row."""
    out = []
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(source, row, f"not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise CalibrationError(source, row, "each line must be a JSON object")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise CalibrationError(source, row, "missing or empty 'prompt' (need a string)")
        task = obj.get("task", "")
        if not isinstance(task, str):
            raise CalibrationError(source, row, "'task' must be a string")
        grader = obj.get("grader")
        try:
            check_spec(grader, obj.get("reference"), obj.get("rubric"), obj.get("judge"))
        except GraderError as exc:
            raise CalibrationError(source, row, str(exc)) from None
        out.append(
            LabelledPrompt(
                row,
                prompt,
                task,
                str(grader),
                obj.get("reference"),
                obj.get("rubric"),
                obj.get("judge"),
            )
        )
    if not out:
        raise CalibrationError(source, None, "no labelled prompts")
    return out


@dataclass(frozen=True)
class CallRecord:
    """The outcome of one prompt sent to one model."""

    row: int
    model: str
    status: str  # "ok", "error" or "timeout"
    score: float | None = None
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    error: str = ""


class CallFailed(Exception):
    """A call did not produce an answer: ``kind`` is ``error`` or ``timeout``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def prompts_digest(prompts: Sequence[LabelledPrompt]) -> str:
    """Identifies a prompt set, so a calls file is resumed only for the set it was made for."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps(asdict(p), sort_keys=True, default=str).encode())
    return h.hexdigest()


def read_calls(path: Path, digest: str) -> dict[tuple[int, str], CallRecord]:
    """The latest record per (row, model) of an existing calls file (empty if none)."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    head = json.loads(lines[0]) if lines else {}
    if head.get("prompts_sha256") != digest:
        raise CalibrationError(
            str(path),
            1,
            "calls file was written for another prompt set; delete it or pass --restart",
        )
    out: dict[tuple[int, str], CallRecord] = {}
    for line in lines[1:]:
        try:
            rec = CallRecord(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue  # a line cut short by the interruption: that call is made again
        out[(rec.row, rec.model)] = rec
    return out


async def _chat(
    client: Any, model: str, content: str, *, max_tokens: int, timeout: float
) -> tuple[str, int, int, float]:
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    started = time.perf_counter()
    try:
        r = await client.post("/chat/completions", json=body, timeout=timeout)
    except httpx.TimeoutException:
        raise CallFailed("timeout", f"no answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise CallFailed("error", f"{type(exc).__name__}: {exc}") from None
    seconds = time.perf_counter() - started
    if r.status_code != 200:
        try:
            message = str(r.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        raise CallFailed("error", f"HTTP {r.status_code}: {message}")
    try:
        doc = r.json()
        text = doc["choices"][0]["message"]["content"] or ""
        usage = doc.get("usage") or {}
        return (
            text,
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            seconds,
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise CallFailed("error", f"answer is not an OpenAI chat completion: {exc!r}") from None


async def _one(
    client: Any,
    p: LabelledPrompt,
    model: str,
    price: Price,
    *,
    max_tokens: int,
    timeout: float,
) -> CallRecord:
    try:
        text, pt, ct, seconds = await _chat(
            client, model, p.prompt, max_tokens=max_tokens, timeout=timeout
        )
    except CallFailed as exc:
        return CallRecord(p.row, model, exc.kind, error=str(exc))
    cost = price.cost(seconds, pt, ct)
    if p.grader == "judge":
        assert p.judge is not None and p.rubric is not None
        try:
            verdict, *_ = await _chat(
                client,
                p.judge,
                judge_prompt(p.rubric, p.prompt, text, p.reference),
                max_tokens=16,
                timeout=timeout,
            )
        except CallFailed as exc:
            return CallRecord(
                p.row, model, exc.kind, None, seconds, pt, ct, cost, f"judge {p.judge}: {exc}"
            )
        score = parse_judge(verdict)
        if score is None:
            return CallRecord(
                p.row,
                model,
                "error",
                None,
                seconds,
                pt,
                ct,
                cost,
                f"judge {p.judge} gave no score: {verdict[:80]!r}",
            )
    else:
        score = grade(p.grader, p.reference, text)
    return CallRecord(p.row, model, "ok", score, seconds, pt, ct, cost)


async def run_calibration(
    base_url: str,
    prompts: Sequence[LabelledPrompt],
    models: Sequence[str],
    prices: Mapping[str, Price],
    *,
    calls_path: Path,
    concurrency: int = 4,
    timeout: float = 120.0,
    max_tokens: int = 256,
    api_key: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    transport: Any = None,
) -> dict[tuple[int, str], CallRecord]:
    """Call every model for every prompt not yet answered; return all records by (row, model).

    ``transport`` (an ``httpx`` transport) is for tests that stand a fake endpoint in."""
    import httpx

    digest = prompts_digest(prompts)
    records = read_calls(calls_path, digest)
    todo = [
        (p, m)
        for p in prompts
        for m in models
        if (p.row, m) not in records or records[(p.row, m)].status != "ok"
    ]
    total, done = len(prompts) * len(models), len(prompts) * len(models) - len(todo)
    calls_path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not calls_path.is_file()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    gate = asyncio.Semaphore(max(1, concurrency))
    with calls_path.open("a") as fh:
        if fresh:
            fh.write(json.dumps({"calibrate": CALLS_VERSION, "prompts_sha256": digest}) + "\n")
            fh.flush()
        if progress is not None:
            progress(done, total)
        async with httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, transport=transport
        ) as client:

            async def task(p: LabelledPrompt, m: str) -> None:
                nonlocal done
                async with gate:
                    rec = await _one(
                        client, p, m, prices.get(m, Price()), max_tokens=max_tokens, timeout=timeout
                    )
                records[(p.row, m)] = rec
                fh.write(json.dumps(asdict(rec)) + "\n")
                fh.flush()
                done += 1
                if progress is not None:
                    progress(done, total)

            await asyncio.gather(*(task(p, m) for p, m in todo))
    return records


def calibration_lines(
    prompts: Sequence[LabelledPrompt],
    models: Sequence[str],
    records: Mapping[tuple[int, str], CallRecord],
    *,
    with_costs: bool,
) -> tuple[list[str], int]:
    """Shoal calibration JSONL lines for prompts every model answered; and how many lacked one."""
    lines, incomplete = [], 0
    for p in prompts:
        recs = [records.get((p.row, m)) for m in models]
        if any(r is None or r.status != "ok" or r.score is None for r in recs):
            incomplete += 1
            continue
        obj: dict[str, Any] = {
            "prompt": p.prompt,
            "task": p.task,
            "scores": {m: r.score for m, r in zip(models, recs, strict=True) if r},
        }
        if with_costs:
            obj["costs"] = {m: r.cost for m, r in zip(models, recs, strict=True) if r}
        lines.append(json.dumps(obj, ensure_ascii=False))
    return lines, incomplete


def summarise(
    prompts: Sequence[LabelledPrompt],
    models: Sequence[str],
    records: Mapping[tuple[int, str], CallRecord],
) -> list[dict[str, Any]]:
    """One row per (model, task): answered, mean score, errors, timeouts, mean seconds, cost."""
    rows = []
    tasks = sorted({p.task for p in prompts})
    for m in models:
        for t in tasks:
            recs = [records[(p.row, m)] for p in prompts if p.task == t and (p.row, m) in records]
            ok = [r for r in recs if r.status == "ok" and r.score is not None]
            rows.append(
                {
                    "model": m,
                    "task": t or "default",
                    "answered": len(ok),
                    "score": sum(r.score for r in ok if r.score is not None) / len(ok)
                    if ok
                    else None,
                    "errors": sum(r.status == "error" for r in recs),
                    "timeouts": sum(r.status == "timeout" for r in recs),
                    "seconds": sum(r.seconds for r in ok) / len(ok) if ok else None,
                    "cost": sum(r.cost for r in ok),
                }
            )
    return rows
