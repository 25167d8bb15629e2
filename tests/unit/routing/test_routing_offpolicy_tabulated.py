"""The operator's refit guard on held-out logged feedback, from counters to verdict, on
synthetic bandit data whose answer is known.

The same biased logging policy as tests/unit/routing/test_routing_offpolicy.py (each model
mostly seen where it is weak). The events go through the ingress's own counter writer
(:meth:`~shoal.serving.metrics.RouterMetrics.logged_feedback`, a real prometheus_client
registry), are read back as the operator reads a Prometheus answer
(:func:`~shoal.operator.refit.logged_rows`, :func:`~shoal.operator.refit.split_held_out`)
and estimated from the sums (:func:`~shoal.routing.offpolicy.compare_tabulated`): the result
equals the per-event IPS estimate and recovers the true difference, where the naive reading
has the wrong sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.unit.routing.test_routing_offpolicy import LOG_P1, TRUTH, logged

from shoal.operator.refit import logged_rows, split_held_out
from shoal.routing.offpolicy import compare, compare_tabulated, naive, one_hot

MODELS = ["m0", "m1"]
#: Policy "new" takes model 1 in both clusters, "old" model 0 (true values 0.45 and 0.60).
NEW, OLD = np.array([1, 1]), np.array([0, 0])
TRUE_DIFF = TRUTH[:, 1].mean() - TRUTH[:, 0].mean()


def tabulate(actions: Any, rewards: Any, propensity: Any, cluster: Any) -> tuple[Any, Any]:
    s1, s2 = np.zeros((2, 2)), np.zeros((2, 2))
    np.add.at(s1, (cluster, actions), rewards / propensity)
    np.add.at(s2, (cluster, actions), (rewards / propensity) ** 2)
    return s1, s2


def test_the_tabulated_estimate_equals_the_per_event_one() -> None:
    log, cluster = logged(5_000, seed=3)
    s1, s2 = tabulate(log.actions, log.rewards, log.propensity, cluster)
    got = compare_tabulated(len(log), s1, s2, NEW, OLD)
    want = compare(log, one_hot(NEW[cluster], 2), one_hot(OLD[cluster], 2), method="ips")
    assert got.n == want.n == 5_000
    assert got.value == pytest.approx(want.value, rel=1e-9)
    assert got.stderr == pytest.approx(want.stderr, rel=1e-9)


def test_identical_policies_differ_by_exactly_zero_and_no_events_is_no_verdict() -> None:
    s = np.ones((2, 2))
    same = compare_tabulated(10, s, s, NEW, NEW)
    assert (same.value, same.stderr) == (0.0, 0.0)
    none = compare_tabulated(0, s, s, NEW, OLD)
    assert none.n == 0 and none.stderr == float("inf")
    with pytest.raises(ValueError, match="contexts"):
        compare_tabulated(10, np.ones((3, 2)), np.ones((3, 2)), NEW, OLD)


def prometheus_answer(registry: Any) -> dict[str, Any]:
    """The registry's logged-feedback samples as Prometheus' /api/v1/query answers the
    operator's query (summed over fleets: here one)."""
    result = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "shoal_feedback_logged_total":
                labels = {k: sample.labels[k] for k in ("model", "cluster", "split", "stat")}
                result.append({"metric": labels, "value": [0, repr(sample.value)]})
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_counters_to_verdict_recover_the_known_answer() -> None:
    import prometheus_client as pc

    from shoal.serving.metrics import RouterMetrics

    log, cluster = logged(40_000, seed=7)
    rng = np.random.default_rng(11)
    held = rng.random(len(log)) < 0.3
    registry = pc.CollectorRegistry()
    metrics = RouterMetrics("f", backend="prometheus", registry=registry)
    for a, r, p, c, h in zip(log.actions, log.rewards, log.propensity, cluster, held, strict=True):
        metrics.logged_feedback(MODELS[a], int(c), float(r), float(p), bool(h))
    rows = logged_rows(prometheus_answer(registry))
    # Every event is also in the plain counters the refit learns from.
    records = []
    for c in (0, 1):
        for a in (0, 1):
            at = (cluster == c) & (log.actions == a)
            records.append((c, MODELS[a], float(at.sum()), float(log.rewards[at].sum())))
    fit, held_out = split_held_out(records, rows, MODELS, 2)
    assert held_out is not None and held_out.events == held.sum()
    # The refit learns only from the other share.
    assert sum(n for _, _, n, _ in fit) == (~held).sum()
    est = compare_tabulated(held_out.events, held_out.weighted, held_out.weighted_sq, NEW, OLD)
    # The truth: "new" is worse by 0.15, and the estimate's upper bound says so (a guard
    # keeps it in shadow); the naive reading of the same events says it is better.
    assert abs(est.value - TRUE_DIFF) < 3 * est.stderr
    assert est.upper() < 0
    sub = type(log)(log.actions[held], log.rewards[held], log.propensity[held])
    c = cluster[held]
    assert naive(sub, one_hot(NEW[c], 2)) > naive(sub, one_hot(OLD[c], 2)) + 0.1
    assert LOG_P1[0] > 0.5 > LOG_P1[1]  # each model mostly logged where it is weak


def test_without_logged_feedback_the_guard_falls_back_to_the_counts() -> None:
    records = [(0, "m0", 10.0, 5.0)]
    fit, held_out = split_held_out(records, [], MODELS, 2)
    assert fit == records and held_out is None
