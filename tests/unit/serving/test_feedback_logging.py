"""Logged routing decisions in completion ids: the propensity is signed, the held-out share
is a deterministic function of the id, and the ingress's counters hold the sums."""

from __future__ import annotations

import pytest

from shoal.serving.feedback import (
    HELD_OUT_SHARE,
    CompletionIds,
    decision_propensity,
    logged_decision,
    logged_prefix,
)
from shoal.serving.openai_api import ApiError


def test_the_propensity_travels_signed_in_the_id() -> None:
    ids = CompletionIds(b"k" * 32)
    cid = ids.issue(logged_prefix("chatcmpl-", 0.125), "math", 3)
    assert cid.startswith("chatcmpl-p01250-")
    who = ids.verify(cid)
    assert (who.model, who.cluster) == ("math", 3)
    got = logged_decision(cid)
    assert got is not None and got[0] == 0.125
    # A client that raises its answer's weight by altering the propensity is refused.
    forged = cid.replace("p01250-", "p00010-", 1)
    with pytest.raises(ApiError) as err:
        ids.verify(forged)
    assert err.value.status == 400


def test_unlogged_answers_carry_no_propensity() -> None:
    ids = CompletionIds(b"k" * 32)
    plain = ids.issue(logged_prefix("cmpl-", None), "math", None)
    assert ids.verify(plain).model == "math"
    assert plain.startswith("cmpl-") and logged_decision(plain) is None
    assert logged_prefix("chatcmpl-", 0.0) == "chatcmpl-"
    assert logged_prefix("chatcmpl-", 1.0) == "chatcmpl-p10000-"
    assert logged_prefix("chatcmpl-", 1e-9) == "chatcmpl-p00001-"  # never a zero weight


def test_the_decisions_propensity_is_the_first_candidates_of_a_routed_request() -> None:
    headers = {"x-shoal-propensity": "0.9500"}
    assert decision_propensity(headers, 2, 0) == 0.95
    assert decision_propensity({}, 2, 0) == 1.0  # routed, no exploration: deterministic
    assert decision_propensity(headers, 2, 1) is None  # a fallback: not the decision's model
    assert decision_propensity(headers, None, 0) is None  # a named model: no decision
    assert decision_propensity({"x-shoal-propensity": "x"}, 2, 0) is None


def test_the_held_out_share_is_a_deterministic_function_of_the_id() -> None:
    ids = CompletionIds(b"k" * 32)
    cids = [ids.issue(logged_prefix("chatcmpl-", 0.5), "m", 0) for _ in range(4000)]
    first = [logged_decision(c) for c in cids]
    assert first == [logged_decision(c) for c in cids]
    share = sum(1 for d in first if d is not None and d[1]) / len(cids)
    assert abs(share - HELD_OUT_SHARE) < 0.03


def test_the_ingress_counters_hold_the_weighted_sums() -> None:
    import prometheus_client as pc

    from shoal.serving.metrics import RouterMetrics

    registry = pc.CollectorRegistry()
    metrics = RouterMetrics("f", backend="prometheus", registry=registry)
    metrics.logged_feedback("alpha", 1, 1.0, 0.25, True)
    metrics.logged_feedback("alpha", 1, 0.5, 0.5, True)
    metrics.logged_feedback("alpha", 1, 1.0, 1.0, False)

    def stat(name: str, split: str = "heldout") -> float | None:
        labels = {"fleet": "f", "model": "alpha", "cluster": "1", "split": split, "stat": name,
                  "ingress_instance": metrics.instance}  # fmt: skip
        return registry.get_sample_value("shoal_feedback_logged_total", labels)

    assert stat("events") == 2 and stat("score") == 1.5
    assert stat("weight") == 4 + 2
    assert stat("weighted_score") == 4 + 1
    assert stat("weighted_score_sq") == 16 + 1
    assert stat("events", "fit") == 1
