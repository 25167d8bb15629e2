"""Evaluation: per-task accuracy, costs, baselines, the frontier, and the JSON report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoal.routing import CalibrationError, Sample, fit_router, load_router
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.evaluate import (
    ALPHA_GRID,
    baselines,
    cheapest_reaching,
    evaluate_router,
    pareto,
    per_task_mean,
    summarise_choice,
)

MODELS = ["big", "small"]
# 4 queries, 2 tasks; "big" is right on 3, "small" on 2; big costs 1.0, small 0.1
Q = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
C = np.array([[1.0, 0.1]] * 4)
TASKS = ["a", "a", "b", "b"]


def test_accuracy_is_the_mean_of_per_task_accuracies() -> None:
    s = summarise_choice(np.array([0, 0, 0, 0]), Q, C, TASKS, MODELS)
    assert s["per_task"] == {"a": 1.0, "b": 0.5}
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["cost"] == pytest.approx(4.0) and s["cost_per_query"] == pytest.approx(1.0)
    assert s["share"] == {"big": 1.0, "small": 0.0}


def test_per_task_mean_weighs_tasks_not_queries() -> None:
    assert per_task_mean(np.array([1, 1, 1, 0]), ["x", "x", "x", "y"]) == {"x": 1.0, "y": 0.0}


def test_baselines() -> None:
    b = baselines(Q, C, TASKS, MODELS)
    assert b["best_single"]["model"] == "big" and b["best_single"]["accuracy"] == pytest.approx(
        0.75
    )
    assert b["single"]["small"]["accuracy"] == pytest.approx(0.5)
    # per task: a -> big and small tie on query 2 but big wins the task; b -> tie 0.5/0.5,
    # so the cheaper model is taken
    assert b["per_task_best"]["models"] == {"a": "big", "b": "small"}
    assert b["per_task_best"]["accuracy"] == pytest.approx(0.75)
    # oracle: best quality per query, the cheapest among ties (query 2: small)
    assert b["oracle"]["accuracy"] == pytest.approx(1.0)
    assert b["oracle"]["share"] == {"big": 0.5, "small": 0.5}
    assert b["oracle"]["cost"] == pytest.approx(2.2)
    assert b["random"]["accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    assert b["random"]["cost"] == pytest.approx(4 * 0.55)
    assert b["oracle"]["accuracy"] >= b["per_task_best"]["accuracy"] >= b["best_single"]["accuracy"]


def test_pareto_and_cheapest_reaching() -> None:
    pts = [
        {"alpha": 0.0, "accuracy": 0.5, "cost": 1.0},
        {"alpha": 0.5, "accuracy": 0.7, "cost": 2.0},
        {"alpha": 0.6, "accuracy": 0.6, "cost": 3.0},  # dominated
        {"alpha": 1.0, "accuracy": 0.8, "cost": 5.0},
    ]
    assert [p["alpha"] for p in pareto(pts)] == [0.0, 0.5, 1.0]
    assert cheapest_reaching(pts, 0.65)["alpha"] == 0.5  # type: ignore[index]
    assert cheapest_reaching(pts, 0.9) is None


def test_alpha_grid_covers_both_ends() -> None:
    assert ALPHA_GRID[0] == 0.0 and ALPHA_GRID[-1] == 1.0 and len(ALPHA_GRID) == 41


def test_evaluate_router_report(samples: list[Sample]) -> None:
    emb = HashingEmbedder(128)
    router = load_router(
        fit_router(samples, embedder=emb, clusters=2, top_p=1, alpha=1.0), embedder=emb
    )
    vectors = emb.embed([s.prompt for s in samples])
    report = evaluate_router(router, samples, vectors, meta={"data": ["syn"]})
    json.dumps(report)  # JSON-able
    assert report["report_version"] == 1 and report["data"] == ["syn"]
    assert report["router"]["alpha"] == 1.0
    assert report["router"]["accuracy"] == pytest.approx(1.0)
    assert set(report["router"]["per_task"]) == {"math", "law"}
    for key in ("best_single", "per_task_best", "oracle", "random"):
        assert {"accuracy", "cost"} <= set(report["baselines"][key])
    assert len(report["sweep"]) == len(ALPHA_GRID)
    cheapest = report["sweep"][0]
    assert cheapest["cost"] == pytest.approx(0.001 * len(samples))
    assert report["reaches_best_single"]["cost_ratio"] < 1.0
    costs = [p["cost"] for p in report["frontier"]]
    assert costs == sorted(costs)


def test_evaluate_router_names_unknown_models(samples: list[Sample]) -> None:
    emb = HashingEmbedder(128)
    router = load_router(fit_router(samples, embedder=emb, clusters=2), embedder=emb)
    other = [Sample(prompt="x", scores={"mathy": 1.0, "gpt-9": 0.0}, origin="eval.jsonl:3")]
    with pytest.raises(
        CalibrationError,
        match=r"eval.jsonl, row 3: unknown models \['gpt-9'\].*no score for the artifact's models \['wordy'\]",
    ):
        evaluate_router(router, other, emb.embed(["x"]))
