"""The savings figures docs/routing.md states for RouterBench ("Savings against GPT-4"), held
to what the code computes, so that they cannot drift.

The test reads the section of the doc: it runs its ``shoal router fit`` and ``shoal router
eval --reference`` commands as written (RouterBench from ``$SHOAL_DATA_DIR/routing``), and
checks every row of its table against the ``savings`` block (alpha, accuracy, spend, share
of GPT-4's cost, saved), at the precision the table prints. The "saved" cell at the default
alpha is formatted by the very function that prints ``shoal usage``'s SAVED column
(:func:`shoal.operator.usage.saved`, over :class:`shoal.contract.cost.Savings`). Slow: the
default embedder over RouterBench (cached under ~/.cache/shoal after the first run).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shoal.cli import app
from shoal.contract.cost import Savings
from shoal.devtools.testing import REPO_ROOT, require
from shoal.operator.usage import saved

pytestmark = pytest.mark.slow

DATA = Path(os.environ.get("SHOAL_DATA_DIR", REPO_ROOT.parent / "shared" / "data")) / "routing"
DOC = REPO_ROOT / "docs" / "routing.md"
SECTION = "### Savings against GPT-4"


def section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.index("\n### ", start + len(SECTION))
    return text[start:end]


def commands() -> list[list[str]]:
    """The section's shell commands, ``$RB`` set to the data, as argument lists."""
    block = section().split("```")[1]
    lines = block.replace("\\\n", " ").splitlines()
    rb = DATA / "routerbench"
    require(rb.is_dir(), f"RouterBench not found at {rb} (set SHOAL_DATA_DIR)")
    out = []
    for line in lines:
        words = shlex.split(line)
        if words[:1] == ["shoal"]:
            out.append([w.replace("$RB", str(rb)) for w in words[1:]])
    assert [c[:2] for c in out] == [["router", "fit"], ["router", "eval"]], out
    return out


def table() -> list[list[str]]:
    """The rows of the section's table, cells stripped of bold."""
    rows = []
    for line in section().splitlines():
        if line.startswith("| ") and not line.startswith(("| alpha", "|---")):
            rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    assert len(rows) >= 3, rows
    return rows


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ``savings`` block of the doc's commands' report."""
    tmp = tmp_path_factory.mktemp("routerbench")
    fit, evaluate = commands()
    runner = CliRunner()
    artifact = str(Path(tmp) / "rb.bin")
    fit = [artifact if w == "rb.bin" else w for w in fit]
    res = runner.invoke(app, fit)
    assert res.exit_code == 0, res.output
    evaluate = [artifact if w == "rb.bin" else w for w in evaluate] + ["--json"]
    res = runner.invoke(app, evaluate)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{") :])
    return dict(report["savings"])


def percent(x: float) -> str:
    return f"{100 * x:.2f}"


def test_the_docs_savings_table_is_what_the_code_computes(out: dict[str, Any]) -> None:
    assert out["reference"] == "gpt-4-1106-preview"
    points = {round(p["alpha"], 3): p for p in out["frontier"]}
    router = out["router"]
    points.setdefault(round(router["alpha"], 3), router)
    for alpha, accuracy, spend, share, saved_cell in table():
        if alpha == "GPT-4 alone":
            assert [accuracy, spend] == [
                percent(out["reference_accuracy"]),
                f"{out['reference_cost']:.3f}",
            ]
            assert (share, saved_cell) == ("100%", "0%")
            continue
        a = float(alpha.removesuffix(" (default)"))
        assert round(a, 3) in points, f"alpha {a} of the doc is not a point of the frontier"
        p = points[round(a, 3)]
        got = [percent(p["accuracy"]), f"{p['spend']:.3f}", f"{100 * p['ratio']:.1f}%",
               f"{p['saved_percent']:.1f}%"]  # fmt: skip
        assert got == [accuracy, spend, share, saved_cell], f"alpha {alpha}"
    # The frontier's points are all in the table (with the default alpha).
    assert len(table()) - 1 == len({*points}), sorted(points)


def test_the_default_alphas_saving_reads_as_shoal_usage_prints_it(out: dict[str, Any]) -> None:
    router = out["router"]
    cell = saved(Savings(router["spend"], out["reference_cost"]))
    default = next(r for r in table() if r[0].endswith("(default)"))
    assert cell == default[4]
    assert re.search(rf"{re.escape(cell)} saved", section()), cell
