"""Small fleets for the serving tests, as API objects."""

from __future__ import annotations

from typing import Any


def fleet_spec(models: list[dict[str, Any]], **tier: Any) -> dict[str, Any]:
    return {
        "routingPolicyRef": {"name": "policy"},
        "tiers": [{"name": "small", "costPerReplicaHour": "0.36", **tier}],
        "models": [{"tier": "small", **m} for m in models],
    }


def sim_args(names: list[str], *, static: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "fleet_name": "test",
        "fleet": fleet_spec([{"name": n, "engine": "simulated"} for n in names]),
        "policy": {"strategy": "static", "staticOrder": static or names},
        **extra,
    }
