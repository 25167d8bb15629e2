"""Autoscaling: size every model of a fleet against its tier's SLO and the fleet's budget.

- :mod:`shoal.autoscaling.policy`: the policy, a pure function
  ``decide(spec, states, window, now) -> FleetDecision`` (per model: desired replicas and
  the reason in words; the budget's verdict; the router's effective alpha).
- :mod:`shoal.autoscaling.types`: metric windows in, decisions out.
- :mod:`shoal.autoscaling.prometheus`: the metrics source for a cluster (PromQL over the
  serving layer's and vLLM's metric names).
- :mod:`shoal.autoscaling.state`: the durable state in ``status.autoscaler``.

The actuator (evaluate a fleet, persist the decision, render the replicas) lives in the
operator (:mod:`shoal.operator.autoscaler`); the fleet simulator (:mod:`shoal.sim`) drives
the very same policy offline. This package imports ``shoal.api`` only.
"""

from shoal.autoscaling.policy import PolicySettings, decide
from shoal.autoscaling.types import (
    FleetDecision,
    MetricsWindow,
    ModelDecision,
    ModelMetrics,
    ModelState,
)

__all__ = [
    "FleetDecision",
    "MetricsWindow",
    "ModelDecision",
    "ModelMetrics",
    "ModelState",
    "PolicySettings",
    "decide",
]
