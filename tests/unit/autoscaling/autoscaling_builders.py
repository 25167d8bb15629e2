"""Builders for autoscaling unit tests: fleet specs, metric windows, a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shoal.api.v1alpha1 import ModelFleetSpec
from shoal.autoscaling.types import MetricsWindow, ModelMetrics

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def spec(
    *,
    models: list[dict[str, Any]] | None = None,
    tiers: list[dict[str, Any]] | None = None,
    budget: dict[str, Any] | None = None,
) -> ModelFleetSpec:
    """A fleet spec: by default one tier (target 4, SLO 1s, 1..8 replicas) and two models."""
    tier = {
        "name": "small",
        "costPerReplicaHour": "1.00",
        "slo": {"ttftP95Milliseconds": 1000},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "targetOngoingRequests": 4,
                        "scaleUpCooldownSeconds": 30, "scaleDownCooldownSeconds": 120},
    }  # fmt: skip
    body: dict[str, Any] = {
        "routingPolicyRef": {"name": "p"},
        "tiers": tiers or [tier],
        "models": models
        or [
            {"name": "a", "engine": "simulated", "tier": "small"},
            {"name": "b", "engine": "simulated", "tier": "small"},
        ],
    }
    if budget:
        body["budget"] = budget
    return ModelFleetSpec.model_validate(body)


def metrics(
    in_flight: float = 0.0,
    *,
    peak: float | None = None,
    ttft: float | None = 0.2,
    age: float = 5.0,
    **kw: Any,
) -> ModelMetrics:
    """Fresh metrics of one model (``age`` seconds old)."""
    return ModelMetrics(
        in_flight=in_flight,
        peak_in_flight=in_flight if peak is None else peak,
        ttft_p95_seconds=ttft,
        observed_at=NOW - timedelta(seconds=age),
        **kw,
    )


def window(**models: ModelMetrics) -> MetricsWindow:
    return MetricsWindow(collected_at=NOW, models=models)
