"""Fixtures of the autoscaler's integration tests: the control plane, a fleet of simulated
models with a static routing policy (no router fit needed), and a fake metrics source for the
tests that call the actuator directly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from shoal.autoscaling.prometheus import Windows
from shoal.autoscaling.types import MetricsWindow, ModelMetrics
from shoal.devtools.testing.controlplane import ControlPlane
from tests.integration.operator.conftest import Cluster

#: Seconds between two autoscaler evaluations in these tests. The kopf timer reads it when
#: the handlers module is imported, so it is set here, before any test starts an operator.
INTERVAL = 2.0
os.environ.setdefault("SHOAL_AUTOSCALER_INTERVAL_SECONDS", str(INTERVAL))


@pytest.fixture()
def cluster(control_plane: ControlPlane, namespace: str) -> Cluster:
    return Cluster(control_plane, namespace)


def static_policy(name: str = "p") -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "RoutingPolicy",
            "metadata": {"name": name},
            "spec": {"strategy": "static", "staticOrder": ["alpha", "beta"]}}  # fmt: skip


def scaling_fleet(
    name: str = "f",
    *,
    budget: str | None = None,
    up: int = 5,
    down: int = 10,
    max_replicas: int = 6,
    quick_beta: bool = False,
) -> dict[str, Any]:
    """Two simulated models in one tier: target 2 in flight per replica, 1..max replicas.
    ``quick_beta``: beta in a tier of its own, alike but for its replicas starting in 15 s
    against the other's 30 s (spillover's bridge takes from slower tiers only)."""
    spec: dict[str, Any] = {
        "routingPolicyRef": {"name": "p"},
        "tiers": [{
            "name": "small", "costPerReplicaHour": "1.00",
            "slo": {"ttftP95Milliseconds": 500},
            "autoscaling": {"minReplicas": 1, "maxReplicas": max_replicas,
                            "targetOngoingRequests": 2, "scaleUpCooldownSeconds": up,
                            "scaleDownCooldownSeconds": down},
        }],
        "models": [
            {"name": "alpha", "engine": "simulated", "tier": "small",
             "engineArgs": {"fixed_step_ms": 40, "output_tokens": 8, "max_batch": 2}},
            {"name": "beta", "engine": "simulated", "tier": "small",
             "engineArgs": {"fixed_step_ms": 40, "output_tokens": 8, "max_batch": 2}},
        ],
    }  # fmt: skip
    if quick_beta:
        quick = {**spec["tiers"][0], "name": "quick"}
        quick["autoscaling"] = {**quick["autoscaling"], "replicaStartSeconds": 15}
        spec["tiers"][0]["autoscaling"]["replicaStartSeconds"] = 30
        spec["tiers"].append(quick)
        spec["models"][1]["tier"] = "quick"
    if budget:
        spec["budget"] = {"maxCostPerHour": budget}
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelFleet",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


@dataclass
class FakeSource:
    """A metrics source the test sets by hand (in flight per model; None: no metrics)."""

    in_flight: dict[str, float | None] = field(default_factory=dict)
    age_seconds: float = 1.0
    error: str | None = None
    calls: int = 0
    #: Per model, metrics to report instead of the in-flight-only ones above.
    metrics: dict[str, ModelMetrics] = field(default_factory=dict)
    #: Per model, the model its spilled requests went to most (spillover's bridge).
    spill_takers: dict[str, str] = field(default_factory=dict)

    def collect(
        self,
        namespace: str,
        fleet: str,
        models: list[str],
        now: datetime,
        windows: Windows | None = None,
    ) -> MetricsWindow:
        self.calls += 1
        if self.error:
            return MetricsWindow(collected_at=now, error=self.error)
        seen = now - timedelta(seconds=self.age_seconds)
        reported = {
            m: ModelMetrics(in_flight=v, peak_in_flight=v, waiting=0.0,
                            ttft_p95_seconds=0.1, observed_at=seen)
            for m, v in self.in_flight.items() if v is not None and m in models
        }  # fmt: skip
        reported |= {
            m: replace(v, observed_at=seen) for m, v in self.metrics.items() if m in models
        }
        return MetricsWindow(collected_at=now, models=reported, spill_takers=self.spill_takers)
