"""The refit loop's pure parts: the PromQL it sends, and how feedback rows are sorted into
what can move the router's tables (the loop itself runs against a real API server and a real
Prometheus in tests/integration/operator/test_router_refit.py)."""

from __future__ import annotations

import pytest

from shoal.operator.refit import (
    FeedbackRow,
    FeedbackUnavailable,
    NoFeedbackSource,
    PrometheusFeedback,
    feedback_enabled,
    feedback_queries,
    tally,
)


def test_queries_sum_every_fleet_of_the_policy_by_model_and_cluster() -> None:
    q = feedback_queries("team", ["b", "a.x"])
    sel = 'namespace="team", fleet=~"a\\\\.x|b"'
    assert q["events"] == (
        f"sum by (model, cluster) (max_over_time(shoal_feedback_total{{{sel}}}[15d])) or "
        f"sum by (model, cluster) (max_over_time(ray_shoal_feedback_total{{{sel}}}[15d]))"
    )
    assert "shoal_feedback_score_total{" in q["score_sum"]
    assert "ray_shoal_feedback_score_total{" in q["score_sum"]


def test_tally_keeps_routed_feedback_on_ranked_models() -> None:
    rows = [
        FeedbackRow("alpha", "0", 10, 9),
        FeedbackRow("beta", "1", 4, 4.0000001),  # scraped a moment after the events
        FeedbackRow("alpha", "", 3, 3),  # a request that named its model: no cluster
        FeedbackRow("fallback", "0", 2, 1),  # a model the router does not rank
    ]
    t = tally(rows, ["alpha", "beta"], clusters=2)
    assert t.records == [(0, "alpha", 10, 9), (1, "beta", 4, 4)]
    assert (t.unrouted, t.unranked, t.foreign) == (3, 2, [])


def test_tally_names_clusters_of_another_fit() -> None:
    t = tally([FeedbackRow("alpha", "7", 1, 1), FeedbackRow("alpha", "x", 1, 1)], ["alpha"], 2)
    assert t.records == [] and t.foreign == ["7", "x"]


def test_enabled_only_for_cluster_policies_that_ask() -> None:
    assert feedback_enabled({"spec": {"feedback": {"enabled": True}}})
    assert not feedback_enabled({"spec": {"feedback": {"enabled": False}}})
    assert not feedback_enabled({"spec": {}})
    assert not feedback_enabled({"spec": {"strategy": "static", "feedback": {"enabled": True}}})


def test_without_prometheus_the_counts_are_unavailable_saying_why() -> None:
    with pytest.raises(FeedbackUnavailable, match="SHOAL_PROMETHEUS_URL is empty"):
        NoFeedbackSource().counts("team", ["f"])
    source = PrometheusFeedback("http://127.0.0.1:9", timeout=0.5)  # nothing listens there
    with pytest.raises(FeedbackUnavailable, match="unreachable"):
        source.counts("team", ["f"])
    source.close()
