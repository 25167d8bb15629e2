"""The bandit-feedback replay and ``shoal router learn`` on a synthetic two-topic set."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from conftest import topic_samples
from shoal.cli import app
from shoal.routing import Sample, fit_router
from shoal.routing.artifact import decode_artifact
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.learn import labelled, learn
from shoal.routing.replay import Labelled, ReplayConfig, replay
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
            "--guard-every",
            "10",
            "--no-cache",
            "--plot",
            str(tmp_path / "curve.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"accuracy_before", "accuracy_after", "events", "cost_per_query_after"} <= set(last)
    assert last["events"] == 60 and last["accuracy_after"] > last["accuracy_before"]
    assert last["adopted"] >= 1 and "adopted" in res.stdout and "off-policy estimate" in res.stdout
    assert {"true_after", "dr", "snips", "ips", "naive_after"} <= set(last["offpolicy"])
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


def two_topics(n: int, math: tuple[float, float]) -> Labelled:
    """``n`` queries of each of two topics, exactly at the two clusters' centroids; on math
    the models score ``math``, on law (0.1, 0.9)."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]] * n, dtype=np.float32)
    quality = np.array([list(math), [0.1, 0.9]] * n)
    return Labelled(vectors, quality, np.ones_like(quality), ("math", "law") * n)


def optimistic_router() -> TableRouter:
    """Calibration right about which model is best on math, but optimistic about both there:
    mathy 0.9 and wordy 0.85 (law: right)."""
    return TableRouter(
        models=("mathy", "wordy"),
        centroids=np.eye(2, dtype=np.float32),
        quality=np.array([[0.9, 0.85], [0.1, 0.9]]),
        cost=np.ones((2, 2)),
        top_p=1,
        temperature=0.1,
        alpha=1.0,
    )


def test_feedback_on_the_chosen_model_alone_moves_to_the_unscored_one_unless_guarded() -> None:
    """The mechanism of the regression: with feedback only on the chosen model, mathy's
    estimate on math falls from 0.9 towards its true 0.8, below wordy's untouched (and
    wrong) 0.85, and the plain posterior moves math to wordy (true 0.2). The pessimistic
    tables keep mathy (measured) ahead of wordy (only calibrated), and the off-policy guard
    refuses the switch even with plain posteriors: the log holds no evidence for wordy."""
    # In truth mathy scores 0.8 on math and wordy 0.2.
    stream, held = two_topics(40, (0.8, 0.2)), two_topics(10, (0.8, 0.2))
    router = optimistic_router()
    plain = ReplayConfig(prior_weight=2, explore="greedy", batch=10, checkpoints=(10,))
    naive = replay(router, stream, held, plain)
    # After 10 events (5 on math), math has moved to wordy: 0.85 -> 0.55.
    assert naive.curve[1]["accuracy"] < naive.curve[0]["accuracy"] - 0.2
    pessimistic = replay(router, stream, held, replace(plain, pessimism=1.0))
    assert {p["accuracy"] for p in pessimistic.curve} == {naive.curve[0]["accuracy"]}
    guarded = replay(router, stream, held, replace(plain, guard=True, guard_every=10))
    assert {p["accuracy"] for p in guarded.curve} == {naive.curve[0]["accuracy"]}
    assert guarded.decisions and not any(d.adopted for d in guarded.decisions)
    assert all(d.true_difference < 0 for d in guarded.decisions if d.true_difference != 0)


def test_the_guard_adopts_a_refit_the_held_out_feedback_shows_better() -> None:
    _, stream = data(60)
    _, held = data(10)
    router = TableRouter.from_artifact(misleading_artifact())
    for explore, ab in (("thompson", 0.0), ("epsilon", 0.0), ("thompson", 0.25)):
        cfg = ReplayConfig(
            prior_weight=2,
            explore=explore,  # type: ignore[arg-type]
            epsilon=0.3,
            batch=5,
            guard=True,
            guard_every=20,
            pessimism=1.0,
            ab=ab,
        )
        res = replay(router, stream, held, cfg)
        assert any(d.adopted for d in res.decisions), explore
        assert res.curve[-1]["accuracy"] > 0.85, explore
        assert res.curve[0]["accuracy"] < 0.3, explore
        # Propensities are logged for every event, and held-out events are not learned from.
        assert len(res.log.propensity) == 120 and 0 < min(res.log.propensity) <= 1
        assert res.feedback.total == 120 - sum(res.log.held)
        first = next(d for d in res.decisions if d.adopted)
        assert first.lower > 0 and first.true_difference > 0


def test_learn_reports_the_off_policy_estimate_next_to_the_truth() -> None:
    _, stream = data(60)
    _, held = data(10)
    cfg = ReplayConfig(
        prior_weight=2, explore="epsilon", epsilon=0.3, batch=5, guard=True, guard_every=20
    )
    out = learn(misleading_artifact(), stream, held, cfg, now=datetime(2026, 12, 1, tzinfo=UTC))
    op = out.report["offpolicy"]
    assert not op["in_sample"] and 0 < op["events"] < 120
    assert op["true_difference"] > 0.5
    for method in ("ips", "snips", "dr"):
        assert op[method]["difference_lower"] > 0, method
        assert abs(op[method]["after"] - op["true_after"]) < 0.25, method
    assert out.report["adopted"] >= 1
    header = decode_artifact(out.artifact)[0]
    assert header["refit"]["pessimism"] == 0.0
