"""The ``shoal.dev/v1alpha1`` API: ``ModelFleet``, ``RoutingPolicy`` and ``Tenant``.

The Pydantic models here are the single source of truth. The CRD YAML in ``crds/`` and in the
Helm chart is generated from them by :mod:`shoal.api.v1alpha1.crd` (``shoal crds``), and a test
fails when the committed files drift from the models.
"""

from shoal.api.v1alpha1.common import GROUP, VERSION, Condition, ConditionStatus
from shoal.api.v1alpha1.fleet import (
    ModelFleet,
    ModelFleetSpec,
    ModelFleetStatus,
    ModelSpec,
    TierSpec,
)
from shoal.api.v1alpha1.policy import RoutingPolicy, RoutingPolicySpec, RoutingPolicyStatus
from shoal.api.v1alpha1.tenant import Tenant, TenantSpec, TenantStatus

API_VERSION = f"{GROUP}/{VERSION}"

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "ModelFleet",
    "ModelFleetSpec",
    "ModelFleetStatus",
    "ModelSpec",
    "RoutingPolicy",
    "RoutingPolicySpec",
    "RoutingPolicyStatus",
    "Tenant",
    "TenantSpec",
    "TenantStatus",
    "TierSpec",
]
