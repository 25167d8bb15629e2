"""``shoal router learn`` on the public RouterDC data: a small replay, as a user runs it.

Fit on a seeded 10% of train, stream 1,000 of the other prompts as bandit feedback, evaluate
on test. The figures of the full study (all events, the variants, RouterBench) come from
``bench/bench_router_learn.py`` and are reported in docs/routing.md, not asserted here; this
test holds the command to its contract and its "before" figure to ``shoal router eval``'s.
Skips without the data (``$SHOAL_DATA_DIR/routing``), fails instead under
``SHOAL_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shoal.cli import app
from shoal.devtools.testing import REPO_ROOT, require
from shoal.routing import fit_router, load_calibration, load_router, make_embedder
from shoal.routing.cache import cached_embed
from shoal.routing.evaluate import evaluate_router

pytestmark = pytest.mark.slow

DATA = Path(os.environ.get("SHOAL_DATA_DIR", REPO_ROOT.parent / "shared" / "data")) / "routing"


def test_router_learn_replays_routerdc_feedback(tmp_path: Path) -> None:
    folder = DATA / "routerdc-7b"
    require(folder.is_dir(), f"routing data not found at {folder} (set SHOAL_DATA_DIR)")
    train_files = sorted(p for p in folder.iterdir() if "train" in p.stem)
    test_files = sorted(p for p in folder.iterdir() if "test" in p.stem)
    emb = make_embedder("minilm-l6-static-v2")
    train = load_calibration(train_files)
    order = np.random.default_rng(0).permutation(len(train))
    cal = [train[i] for i in sorted(order[: len(train) // 10])]
    rest = [train[i] for i in sorted(order[len(train) // 10 :])]
    blob = fit_router(
        cal,
        embedder=emb,
        embeddings=cached_embed(emb, [s.prompt for s in cal]),
        clusters=16,
        top_p=1,
        alpha=1.0,
        fitted_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    (tmp_path / "a.bin").write_bytes(blob)
    with (tmp_path / "feedback.jsonl").open("w") as fh:
        for s in rest:
            fh.write(
                json.dumps({"prompt": s.prompt, "task": s.task, "scores": dict(s.scores)}) + "\n"
            )

    args = [
        "router",
        "learn",
        "-a",
        str(tmp_path / "a.bin"),
        "-f",
        str(tmp_path / "feedback.jsonl"),
        "--out",
        str(tmp_path / "b.bin"),
        "--events",
        "1000",
    ]
    for f in test_files:
        args += ["-d", str(f)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert last["events"] == 1000 and last["cost_per_query_after"] == 0.0
    assert [p["events"] for p in last["curve"]] == [0, 100, 250, 500, 1000]

    # The replay's "before" is what `shoal router eval` says of the same artifact on test.
    test = load_calibration(test_files)
    report = evaluate_router(
        load_router(blob, embedder=emb), test, cached_embed(emb, [s.prompt for s in test])
    )
    assert last["accuracy_before"] == pytest.approx(report["router"]["accuracy"], abs=1e-9)
    assert last["accuracy_after"] > report["baselines"]["random"]["accuracy"]
    learned = load_router((tmp_path / "b.bin").read_bytes(), embedder=emb)
    assert learned.models == load_router(blob, embedder=emb).models
