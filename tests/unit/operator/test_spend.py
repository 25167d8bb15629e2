"""A fleet's spend and savings: ``status.spend`` from the ingress's series (read by a
Prometheus source: here a fake that answers fixed vectors, below the real-Prometheus test of
the same queries' shape in tests/integration/autoscaling), and ``shoal usage``'s rows."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shoal.api.v1alpha1 import ModelFleet
from shoal.operator.spend import FleetSpendReading, read_spend, spend_queries, spend_status
from shoal.operator.usage import rows_from_fleets, rows_from_tenants, saved, with_prometheus

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def fleet(savings: dict[str, Any] | None = None) -> ModelFleet:
    spec: dict[str, Any] = {
        "routingPolicyRef": {"name": "p"},
        "tiers": [{"name": "t", "costPerReplicaHour": "1"}],
        "models": [
            {"name": "tiny", "engine": "simulated", "tier": "t"},
            {"name": "big", "engine": "openai", "tier": "t",
             "external": {"baseUrl": "https://api.example.com/v1", "model": "m",
                          "price": {"inputPerMillion": "10", "outputPerMillion": "30"}}},
        ],
    }  # fmt: skip
    if savings is not None:
        spec["savings"] = savings
    return ModelFleet.model_validate({"metadata": {"name": "f", "namespace": "ns"}, "spec": spec})


class FakeSource:
    """Answers each query with a fixed vector (a fake Prometheus source)."""

    def __init__(self, cost: dict[str, float], reference: dict[str, float]) -> None:
        self.answers = {"shoal_cost_usd_total": cost, "shoal_reference_cost_usd_total": reference}
        self.queries: list[str] = []

    def query(self, promql: str, label: str) -> dict[str, tuple[float, float | None]]:
        self.queries.append(promql)
        for metric, values in self.answers.items():
            if f"({metric}{{" in promql:
                return {k: (0.0, v) for k, v in values.items()}
        return {}


def test_queries_cover_both_spellings_of_both_series() -> None:
    q = spend_queries("ns", "f")
    assert 'ray_shoal_cost_usd_total{namespace="ns", fleet="f"}' in q["cost"]
    assert "shoal_reference_cost_usd_total{" in q["reference"] and "[1h]" in q["reference"]


def test_status_spend_shows_the_external_part_and_the_savings() -> None:
    source = FakeSource({"tiny": 0.5, "big": 1.5}, {"tiny": 6.0, "big": 4.0})
    reading = read_spend(source, "ns", "f")  # type: ignore[arg-type]
    status = spend_status(fleet({"referenceModel": "big"}), reading, NOW)
    assert status.last_hour_cost_usd == "2.0000"
    assert status.last_hour_external_cost_usd == "1.5000"
    assert status.last_hour_reference_cost_usd == "10.0000"
    assert status.saved_percent == "80.0"


def test_without_a_reference_there_are_no_savings() -> None:
    reading = FleetSpendReading({"tiny": 0.5}, None)
    status = spend_status(fleet(), reading, NOW)
    assert status.last_hour_reference_cost_usd is None and status.saved_percent is None
    # A reference, but nothing answered yet: no ratio to give.
    status = spend_status(fleet({"referenceModel": "big"}), FleetSpendReading({}, None), NOW)
    assert status.last_hour_reference_cost_usd == "0.0000" and status.saved_percent is None


def test_usage_rows_for_fleets_and_tenants_show_savings() -> None:
    body = {"metadata": {"name": "f", "namespace": "ns"},
            "status": {"spend": {"lastHourCostUsd": "2.0000", "lastHourExternalCostUsd": "1.5",
                                 "lastHourReferenceCostUsd": "10.0000"}}}  # fmt: skip
    (row,) = rows_from_fleets([body])
    assert (row.cost_usd, row.external_usd) == (Decimal("2.0000"), Decimal("1.5"))
    assert saved(row.savings) == "80.0%"
    (plain,) = rows_from_fleets([{"metadata": {"name": "g"}}])
    assert saved(plain.savings) == "-" and plain.updated == "never"
    tenant = {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"fleetRef": {"name": "f"}},
              "status": {"usage": {"lastHourCostUsd": "1.0000",
                                   "lastHourReferenceCostUsd": "4.0000"}}}  # fmt: skip
    (t,) = rows_from_tenants([tenant])
    assert saved(t.savings) == "75.0%"
    (p,) = with_prometheus([t], {("ns", "f", "a"): {"cost": 0.5, "reference": 1.0}}, "now")
    assert saved(p.savings) == "50.0%"
