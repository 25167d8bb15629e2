"""A model's replica range is derived in one place, and every reader agrees with it."""

from __future__ import annotations

import pytest

from shoal.api.v1alpha1 import ModelSpec, TierSpec
from shoal.contract import ReplicaRange, replica_range


def _tier(**autoscaling: int | bool) -> TierSpec:
    return TierSpec.model_validate(
        {"name": "t", "costPerReplicaHour": "1", "autoscaling": autoscaling}
    )


def _model(**bounds: int) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "engine": "simulated", "tier": "t", **bounds})


@pytest.mark.parametrize(
    ("tier", "model", "expected"),
    [
        ({"minReplicas": 1, "maxReplicas": 4}, {}, ReplicaRange(1, 4, 1)),
        ({"minReplicas": 2, "maxReplicas": 4}, {}, ReplicaRange(2, 4, 2)),
        # the model's own bounds win over its tier's
        (
            {"minReplicas": 1, "maxReplicas": 4},
            {"minReplicas": 3, "maxReplicas": 6},
            ReplicaRange(3, 6, 3),
        ),
        # a model that may scale to zero still starts with one replica
        ({"minReplicas": 0, "maxReplicas": 4, "scaleToZero": True}, {}, ReplicaRange(0, 4, 1)),
        # max is never below min
        ({"minReplicas": 1, "maxReplicas": 2}, {"minReplicas": 5}, ReplicaRange(5, 5, 5)),
    ],
)
def test_replica_range(tier: dict[str, int], model: dict[str, int], expected: ReplicaRange) -> None:
    assert replica_range(_model(**model), _tier(**tier)) == expected


def test_clamp() -> None:
    span = ReplicaRange(min=2, max=5, initial=2)
    assert [span.clamp(n) for n in (0, 2, 4, 9)] == [2, 2, 4, 5]
