"""Per-cluster thresholds and the offline replay of a cascade, on data with a known answer."""

from __future__ import annotations

import math

import numpy as np

from shoal.routing import cascade as cs


def brute_force(conf: np.ndarray, ua: np.ndarray, ue: np.ndarray, t: float) -> float:
    return float(np.where(conf >= t, ua, ue).sum())


def test_thresholds_maximise_each_clusters_utility() -> None:
    rng = np.random.default_rng(3)
    n = 400
    conf = rng.random(n)
    cluster = rng.integers(0, 3, n)
    ua = np.where(conf > 0.3 + 0.2 * cluster, 1.0, -1.0) + rng.normal(0, 0.1, n)
    ue = np.full(n, 0.2)
    th = cs.fit_thresholds(conf, cluster, ua, ue, 4, shrinkage=0.0)
    cand = cs.candidate_thresholds(conf)
    for c in range(3):
        m = cluster == c
        best = max(brute_force(conf[m], ua[m], ue[m], t) for t in cand)
        assert math.isclose(th.utility[c], best, rel_tol=1e-9)
        assert math.isclose(brute_force(conf[m], ua[m], ue[m], th.per_cluster[c]), best)
    # The clusters were built with thresholds near 0.3, 0.5, 0.7; the empty one gets the default.
    assert th.per_cluster[0] < th.per_cluster[1] < th.per_cluster[2]
    assert th.per_cluster[3] == th.default


def test_escalation_that_never_pays_accepts_everything_and_always_paying_escalates_all() -> None:
    conf = np.linspace(0, 1, 50)
    cluster = np.zeros(50, dtype=int)
    th = cs.fit_thresholds(conf, cluster, np.ones(50), np.zeros(50), 1)
    assert th.per_cluster[0] == -math.inf
    th = cs.fit_thresholds(conf, cluster, np.zeros(50), np.ones(50), 1)
    assert th.per_cluster[0] == math.inf


def test_shrinkage_pulls_a_small_cluster_toward_the_global_choice() -> None:
    # Cluster 0: 200 queries where escalating pays. Cluster 1: 3 noisy queries that say
    # accepting pays; with shrinkage the small cluster follows the large one.
    conf = np.concatenate([np.linspace(0, 1, 200), [0.1, 0.2, 0.3]])
    cluster = np.array([0] * 200 + [1] * 3)
    ua = np.concatenate([np.zeros(200), np.ones(3)])
    ue = np.concatenate([np.ones(200), np.zeros(3)])
    assert cs.fit_thresholds(conf, cluster, ua, ue, 2, shrinkage=0.0).per_cluster[1] < 0.2
    assert cs.fit_thresholds(conf, cluster, ua, ue, 2, shrinkage=20.0).per_cluster[1] > 0.3


def test_replay_counts_every_attempts_cost() -> None:
    quality = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    cost = np.array([[1.0, 2.0, 10.0], [1.0, 2.0, 10.0], [1.0, 2.0, 10.0]])
    voters = np.zeros((3, 3), dtype=bool)
    voters[:2, 1] = True  # queries 0 and 1 ask model 1 for a second opinion
    out = cs.replay(
        quality,
        cost,
        answerer=np.array([0, 0, 0]),
        voters=voters,
        target=np.array([2, 2, -1]),
        accept=np.array([True, False, False]),
    )
    assert out.quality.tolist() == [1.0, 1.0, 0.0]  # the third has nothing to escalate to
    assert out.cost.tolist() == [3.0, 13.0, 1.0]
    assert out.escalated.tolist() == [False, True, False]
    assert out.answered_by.tolist() == [0, 2, 0]
    assert out.calls.tolist() == [2, 3, 1]


def test_frontier_and_operating_points() -> None:
    pts = [
        {"accuracy": 0.5, "cost": 1.0},
        {"accuracy": 0.4, "cost": 2.0},
        {"accuracy": 0.8, "cost": 3.0},
        {"accuracy": 0.9, "cost": 9.0},
    ]
    assert [p["cost"] for p in cs.frontier(pts)] == [1.0, 3.0, 9.0]
    assert cs.cheapest_at(pts, 0.75) == pts[2]
    assert cs.cheapest_at(pts, 0.95) is None
    assert cs.best_within(pts, 2.5) == 0.5
    assert cs.best_within(pts, 0.5) is None


def test_the_bootstrap_says_how_far_the_cheapest_point_at_99_percent_moves() -> None:
    rng = np.random.default_rng(0)
    n = 200
    tasks = ["a"] * 100 + ["b"] * 100
    ref_q = np.ones(n)
    ref_c = np.full(n, 2.0)
    half = (np.ones(n), np.ones(n))  # as good as the reference, half its price
    never = (np.where(np.arange(n) < 100, 1.0, 0.0), np.full(n, 0.1))  # fails task b
    figures = cs.bootstrap_cheapest(
        np.column_stack([half[0], never[0]]), np.column_stack([half[1], never[1]]),
        ref_q, ref_c, tasks, resamples=50,
    )  # fmt: skip
    assert figures.shape == (50,) and np.allclose(figures, 0.5)
    # A point right on 99 % of the reference: whether a draw reaches it depends on the draw.
    noisy = (rng.random(n) < 0.99).astype(float)
    edge = cs.bootstrap_cheapest(noisy[:, None], np.full((n, 1), 0.5), ref_q, ref_c, tasks)
    assert 0.0 < float(np.isfinite(edge).mean()) < 1.0
    assert set(np.unique(edge[np.isfinite(edge)]).round(6)) == {0.25}
    again = cs.bootstrap_cheapest(noisy[:, None], np.full((n, 1), 0.5), ref_q, ref_c, tasks)
    assert np.array_equal(edge, again)  # seeded
    none = cs.bootstrap_cheapest(never[0][:, None], never[1][:, None], ref_q, ref_c, tasks)
    assert np.isinf(none).all()
