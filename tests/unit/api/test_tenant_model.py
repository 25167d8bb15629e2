"""The Tenant model in Python judges objects as the API server's schema and CEL rules do
(the API-server side is tests/integration/api/test_cel_rules.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shoal.api.v1alpha1 import TenantSpec

KEY = {"secretRef": {"name": "team-key", "key": "key"}}


def spec(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"fleetRef": {"name": "f"}, "apiKeys": [KEY]}
    out.update(changes)
    return out


def test_minimal_tenant_has_defaults() -> None:
    t = TenantSpec.model_validate(spec())
    assert t.limits.requests_per_minute is None and t.budget is None
    assert t.allowed_models == [] and t.routing.min_alpha is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"apiKeys": []}, "apiKeys"),
        ({"apiKeys": [KEY, KEY]}, "apiKeys must name each Secret key once"),
        ({"apiKeys": [{"secretRef": {"name": "Team_Key", "key": "key"}}]}, "name"),
        ({"apiKeys": [{"secretRef": {"name": "team-key", "key": "a key"}}]}, "key"),
        ({"limits": {"requestsPerMinute": 0}}, "requestsPerMinute"),
        ({"limits": {"concurrentRequests": -1}}, "concurrentRequests"),
        ({"budget": {"maxCostPerHour": "-1"}}, "maxCostPerHour"),
        ({"budget": {"maxCostPerHour": "1", "softLimitPercent": 101}}, "softLimitPercent"),
        ({"routing": {"minAlpha": "0.9", "maxAlpha": "0.1"}}, "minAlpha must be less"),
        ({"routing": {"minAlpha": "1.5"}}, "minAlpha"),
        ({"allowedTiers": ["a", "a"]}, "allowedTiers must name each tier once"),
    ],
)
def test_invalid_tenants_are_refused_naming_the_field(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        TenantSpec.model_validate(spec(**changes))
