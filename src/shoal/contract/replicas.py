"""A model's replica range: the one place its min, max and starting replicas are derived.

A model's own ``minReplicas``/``maxReplicas`` win over its tier's autoscaling bounds; max is
never below min; a model starts with at least one replica unless its range is 0..0. The
autoscaler (its bounds), the serving contract (Ray Serve's ``autoscaling_config``) and
planning (the replica counts it reports) all read this, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.api.v1alpha1 import ModelSpec, TierSpec


@dataclass(frozen=True)
class ReplicaRange:
    """Replica bounds of one model, and how many it starts with before any decision."""

    min: int
    max: int
    initial: int

    def clamp(self, n: int) -> int:
        """``n`` held within ``[min, max]``."""
        return max(self.min, min(self.max, n))


def replica_range(model: ModelSpec, tier: TierSpec) -> ReplicaRange:
    """The replica range of ``model`` in ``tier`` (its own bounds, else its tier's)."""
    scaling = tier.autoscaling
    lo = model.min_replicas if model.min_replicas is not None else scaling.min_replicas
    hi = model.max_replicas if model.max_replicas is not None else scaling.max_replicas
    hi = max(hi, lo)
    return ReplicaRange(min=lo, max=hi, initial=min(max(lo, 1), hi))
