"""``shoal usage``'s rows from Tenant statuses, and with Prometheus's numbers over them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shoal.operator.usage import rows_from_tenants, with_prometheus


def body(name: str, fleet: str, cost: str, budget: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"fleetRef": {"name": fleet}}
    if budget:
        spec["budget"] = {"maxCostPerHour": budget}
    status = {"keys": 1, "conditions": [{"type": "Ready", "status": "True"}],
              "usage": {"lastHourCostUsd": cost, "lastHourRequests": 10, "lastHourTokens": 500,
                        "updatedTime": "2026-12-01T00:00:00Z"}}  # fmt: skip
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec, "status": status}


def test_rows_sort_by_spend_and_show_budget_use() -> None:
    rows = rows_from_tenants([body("a", "f", "0.1000"), body("b", "f", "1.5000", "2.00"),
                              body("c", "g", "9.0000")], fleet="f")  # fmt: skip
    assert [r.tenant for r in rows] == ["b", "a"]
    assert rows[0].budget_used == "75%" and rows[1].budget_used == "-"
    assert rows[0].ready == "True" and rows[0].requests == 10


def test_prometheus_numbers_replace_the_status() -> None:
    rows = rows_from_tenants([body("a", "f", "0.1000")])
    got = with_prometheus(
        rows, {("ns", "f", "a"): {"cost": 0.25, "requests": 3, "tokens": 40}}, "now"
    )
    assert (got[0].cost_usd, got[0].requests, got[0].updated) == (Decimal("0.2500"), 3, "now")


def test_tenant_key_makes_long_random_keys() -> None:
    from typer.testing import CliRunner

    from shoal.cli import app
    from shoal.contract.tenants import MIN_KEY_LENGTH

    keys = {CliRunner().invoke(app, ["tenant", "key"]).output.strip() for _ in range(3)}
    assert len(keys) == 3 and all(len(k) == 48 >= MIN_KEY_LENGTH for k in keys)
