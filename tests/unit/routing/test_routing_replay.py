"""The bandit-feedback replay and ``shoal router learn`` on a synthetic two-topic set."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from conftest import topic_samples
from shoal.cli import app
from shoal.routing import Sample, fit_router
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.learn import labelled, learn
from shoal.routing.replay import ReplayConfig, replay
from shoal.routing.tables import TableRouter

EMB = HashingEmbedder(64)
MODELS = ["mathy", "wordy"]


def misleading_artifact() -> bytes:
    """A router whose calibration says the opposite of the truth: mathy for law, wordy for math."""
    wrong = [
        Sample(s.prompt, {"mathy": s.scores["wordy"], "wordy": s.scores["mathy"]}, s.task, s.costs)
        for s in topic_samples(4)
    ]
    return fit_router(wrong, embedder=EMB, clusters=2, top_p=1, alpha=1.0, seed=0)


def data(n: int) -> tuple[list[Sample], object]:
    samples = topic_samples(n)
    return samples, labelled(samples, EMB.embed([s.prompt for s in samples]), MODELS)


def test_feedback_corrects_a_misleading_calibration() -> None:
    _, stream = data(40)
    _, held = data(10)
    router = TableRouter.from_artifact(misleading_artifact())
    for explore in ("thompson", "epsilon"):
        cfg = ReplayConfig(
            prior_weight=2,
            explore=explore,
            epsilon=0.2,
            batch=5,  # type: ignore[arg-type]
            checkpoints=(10, 40),
        )
        res = replay(router, stream, held, cfg)
        assert [p["events"] for p in res.curve] == [0, 10, 40, 80]
        # The two clusters of the hashed embedder mix the topics a little: 0.88 is their best.
        assert res.curve[0]["accuracy"] < 0.3 and res.curve[-1]["accuracy"] > 0.85, explore
        assert res.feedback.total == 80 and len(res.log.rows) == 80 and res.explored > 0


def test_greedy_replay_is_reproducible_and_reveals_only_the_choice() -> None:
    _, stream = data(10)
    router = TableRouter.from_artifact(misleading_artifact())
    a = replay(router, stream, stream, ReplayConfig(explore="greedy", seed=3))
    b = replay(router, stream, stream, ReplayConfig(explore="greedy", seed=3))
    assert a.log.rows == b.log.rows and a.log.models == b.log.models
    revealed = stream.quality[np.array(a.log.rows), np.array(a.log.models)]  # type: ignore[attr-defined]
    assert revealed.tolist() == a.log.scores


def test_learn_reports_and_variants(tmp_path: Path) -> None:
    _, stream = data(30)
    _, held = data(8)
    out = learn(
        misleading_artifact(),
        stream,
        held,
        ReplayConfig(prior_weight=2, batch=5),  # type: ignore[arg-type]
        now=datetime(2026, 12, 1, tzinfo=UTC),
        variants=True,
        fine_clusters=(4,),
        knn_neighbours=(5,),
    )
    r = out.report
    assert r["accuracy_after"] > r["accuracy_before"] and r["events"] == 60
    assert set(r["variants"]) == {"knn_5", "fine_4"}
    assert TableRouter.from_artifact(out.artifact).quality.shape == (2, 2)


def write(path: Path, samples: list[Sample]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"prompt": s.prompt, "task": s.task, "scores": dict(s.scores)}) + "\n"
            for s in samples
        )
    )
    return path


def test_router_learn_cli(tmp_path: Path) -> None:
    art = tmp_path / "a.bin"
    art.write_bytes(misleading_artifact())
    fb = write(tmp_path / "fb.jsonl", topic_samples(30))
    ev = write(tmp_path / "ev.jsonl", topic_samples(6))
    res = CliRunner().invoke(
        app,
        [
            "router",
            "learn",
            "--artifact",
            str(art),
            "--feedback",
            str(fb),
            "-d",
            str(ev),
            "--out",
            str(tmp_path / "b.bin"),
            "--prior-weight",
            "2",
            "--batch",
            "5",
            "--no-cache",
            "--plot",
            str(tmp_path / "curve.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"accuracy_before", "accuracy_after", "events", "cost_per_query_after"} <= set(last)
    assert last["events"] == 60 and last["accuracy_after"] > last["accuracy_before"]
    assert (tmp_path / "b.bin").is_file() and (tmp_path / "curve.png").read_bytes()[
        :4
    ] == b"\x89PNG"
    bad = CliRunner().invoke(
        app,
        [
            "router",
            "learn",
            "-a",
            str(art),
            "-f",
            str(fb),
            "-d",
            str(ev),
            "-o",
            str(tmp_path / "c.bin"),
            "--explore",
            "wild",
        ],
    )
    assert bad.exit_code == 2 and "--explore" in bad.output
