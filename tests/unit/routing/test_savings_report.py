"""``shoal router eval --reference``: the savings block, computed with the fleet's own
Savings arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.routing.savings import savings_report


def report() -> dict[str, Any]:
    return {
        "router": {"alpha": 0.7, "accuracy": 0.78, "cost": 0.33},
        "baselines": {"single": {"gpt-4": {"accuracy": 0.83, "cost": 4.8},
                                 "small": {"accuracy": 0.54, "cost": 0.08}}},
        "frontier": [{"alpha": 0.0, "accuracy": 0.54, "cost": 0.08},
                     {"alpha": 0.8, "accuracy": 0.84, "cost": 3.9},
                     {"alpha": 0.9, "accuracy": 0.85, "cost": 4.5}],
    }  # fmt: skip


def test_savings_against_the_reference_at_each_point() -> None:
    out = savings_report(report(), "gpt-4")
    assert out["reference_cost"] == 4.8 and out["reference_accuracy"] == 0.83
    assert out["router"]["ratio"] == pytest.approx(0.33 / 4.8)
    assert out["router"]["saved_percent"] == pytest.approx(100 * (1 - 0.33 / 4.8))
    assert [p["alpha"] for p in out["frontier"]] == [0.0, 0.8, 0.9]
    assert out["reaches_reference"]["alpha"] == 0.8  # the cheapest at or above GPT-4


def test_an_unknown_reference_is_refused_naming_the_known_models() -> None:
    with pytest.raises(ValueError, match="known: gpt-4, small"):
        savings_report(report(), "gpt-5")
