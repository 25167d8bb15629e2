"""Exploration sends a capped share of requests to near-best models, and only to them."""

from __future__ import annotations

from shoal.api.v1alpha1.policy import ExplorationSpec
from shoal.serving.exploration import Explorer, explored

SCORES = {"a": 0.90, "b": 0.87, "c": 0.70}
RANKED = ["a", "b", "c"]


def _explorer(percent: int = 10, cap: str | None = None, draws: list[float] | None = None,
              replicas: int = 1) -> Explorer:  # fmt: skip
    spec = ExplorationSpec(percent=percent, quality_margin="0.05", max_cost_per_hour=cap)
    values = iter(draws or [0.0] * 1000)
    return Explorer(spec, replicas, rng=lambda: next(values), pick=lambda ms: ms[0])


def test_only_models_within_the_margin_are_explored() -> None:
    assert _explorer().choose(RANKED, SCORES, 0.0, lambda m: 0.0) == "b"
    far = {"a": 0.9, "b": 0.8, "c": 0.7}
    assert _explorer().choose(RANKED, far, 0.0, lambda m: 0.0) is None


def test_the_share_is_capped_by_percent() -> None:
    e = _explorer(percent=10, draws=[i / 100 for i in range(100)])
    chosen = [e.choose(RANKED, SCORES, 0.0, lambda m: 0.0) for _ in range(100)]
    assert sum(c is not None for c in chosen) == 10


def test_off_without_scores_or_percent() -> None:
    assert _explorer(percent=0).choose(RANKED, SCORES, 0.0, lambda m: 0.0) is None
    assert _explorer().choose(RANKED, None, 0.0, lambda m: 0.0) is None


def test_the_cost_budget_holds_over_an_hour_and_is_shared_by_replicas() -> None:
    e = _explorer(cap="1.00", replicas=2)  # 0.50 USD an hour for this replica
    costs = [e.choose(RANKED, SCORES, float(t), lambda m: 0.2) for t in range(4)]
    assert costs == ["b", "b", None, None]
    assert e.choose(RANKED, SCORES, 3601.0, lambda m: 0.2) == "b"  # the first has aged out


def test_explored_keeps_the_rest_for_fallback() -> None:
    assert explored(RANKED, "b") == ["b", "a", "c"]


def test_each_decision_says_its_propensity() -> None:
    """The probability the decision gave the model the request goes to: percent / near for
    an explored model, 1 - percent * allowed / near for the first choice."""
    wide = {"a": 0.90, "b": 0.87, "c": 0.86}
    explore = _explorer(percent=10, draws=[0.0])  # explores: b, one of two near models
    assert explore.decide(RANKED, wide, 0.0, lambda m: 0.0) == ("b", 0.05)
    keep = _explorer(percent=10, draws=[0.5])  # does not explore
    assert keep.decide(RANKED, wide, 0.0, lambda m: 0.0) == (None, 0.9)
    assert _explorer().decide(RANKED, {"a": 0.9, "b": 0.1}, 0.0, lambda m: 0.0) == (None, 1.0)
    # A budget that lets only the cheaper near model through: the first choice keeps more.
    capped = _explorer(percent=10, cap="0.15", draws=[0.5])
    model, p = capped.decide(RANKED, wide, 0.0, lambda m: 0.1 if m == "b" else 0.2)
    assert model is None and abs(p - 0.95) < 1e-12
