"""One cost per request in USD, and savings against a reference (shoal.contract.cost)."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.api.v1alpha1 import ModelFleetSpec
from shoal.contract.cost import (
    ModelPrice,
    Savings,
    fleet_model_prices,
    reference_price,
    savings_of,
)


def fleet(**fields: Any) -> ModelFleetSpec:
    data: dict[str, Any] = {
        "routingPolicyRef": {"name": "p"},
        "tiers": [{"name": "small", "costPerReplicaHour": "0.36"},
                  {"name": "frontier", "costPerReplicaHour": "0"}],
        "models": [
            {"name": "tiny", "engine": "simulated", "tier": "small"},
            {"name": "big", "engine": "openai", "tier": "frontier",
             "external": {"baseUrl": "https://api.example.com/v1", "model": "gpt-4o",
                          "price": {"inputPerMillion": "2.50", "outputPerMillion": "10.00"}}},
        ],
    }  # fmt: skip
    data.update(fields)
    return ModelFleetSpec.model_validate(data)


def test_external_models_are_billed_per_token_and_own_models_per_replica_time() -> None:
    prices = fleet_model_prices(fleet())
    assert prices["big"].per_token and not prices["tiny"].per_token
    # 1,000 prompt and 500 completion tokens at $2.50 / $10 per million: $0.0075, whatever
    # the time it took.
    assert prices["big"].cost(99.0, 1000, 500) == pytest.approx(0.0075)
    # 10 s of a $0.36/h replica shared with one other request: $0.0005 (an estimate).
    assert prices["tiny"].cost(10.0, 1000, 500, sharing=2) == pytest.approx(0.0005)
    assert prices["tiny"].cost(-1.0, 0, 0) == 0.0


def test_reference_is_a_named_external_model_or_a_bare_price() -> None:
    assert reference_price(fleet()) is None
    by_model = reference_price(fleet(savings={"referenceModel": "big"}))
    assert by_model == ModelPrice(per_million_input=2.5, per_million_output=10.0)
    price = {"inputPerMillion": "10", "outputPerMillion": "30"}
    by_price = reference_price(fleet(savings={"referencePrice": price}))
    assert by_price is not None and by_price.cost(0.0, 1_000_000, 0) == pytest.approx(10.0)


def test_savings_compare_spend_with_the_reference_for_the_same_tokens() -> None:
    ref = ModelPrice(per_million_input=10.0, per_million_output=30.0)
    s = savings_of([0.001, 0.002], [(1000, 100), (2000, 200)], ref)
    assert s.reference_usd == pytest.approx(0.039)
    assert s.spend_usd == pytest.approx(0.003)
    assert s.ratio == pytest.approx(0.003 / 0.039)
    assert s.saved_percent == pytest.approx(100 * (1 - 0.003 / 0.039))
    assert "saved" in s.describe()
    assert Savings(1.0, 0.0).ratio is None and Savings(1.0, 0.0).saved_percent is None
    assert Savings(2.0, 1.0).saved_usd == -1.0  # costlier than the reference
    assert (Savings(1, 2) + Savings(3, 4)) == Savings(4, 6)
