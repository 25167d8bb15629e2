"""``Tenant``: a team allowed to call one fleet, with its API keys, limits and budget.

A kind of its own rather than a field of the fleet: onboarding a team, rotating its key or
changing its limits never edits (nor redeploys) the fleet; RBAC can delegate Tenant objects
to whoever runs onboarding without handing out the fleet; and each team's status (its keys,
its spend) lives on the team's own object.

A tenant's API keys are never in the object: ``spec.apiKeys`` names Secret keys (in the
tenant's namespace), which the operator reads only where the Secret's owner marked it for
Shoal (label ``shoal.dev/api-key: "true"``), and only digests of them reach the fleet.
Cross-field rules the API server can check are :class:`~shoal.api.v1alpha1.common.Rule` s;
what only the fleet knows (its models and tiers) the operator reports as conditions.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from shoal.api.v1alpha1.common import (
    ApiModel,
    Condition,
    Fraction,
    Money,
    Name,
    ObjectMeta,
    ObjectName,
    Rule,
)

#: Most API keys one tenant holds at once (two is the usual rotation overlap).
MAX_API_KEYS = 8
#: A key of a Secret's data, as Kubernetes accepts it.
SECRET_DATA_KEY = r"^[-._a-zA-Z0-9]+$"
#: Label a Secret's owner sets (to "true") to let Shoal use the Secret as a tenant's API key.
API_KEY_LABEL = "shoal.dev/api-key"


class SecretKeySelector(ApiModel):
    """One key of a Secret in the tenant's namespace."""

    name: ObjectName = Field(description="Name of the Secret (in the tenant's namespace).")
    key: Annotated[
        str, StringConstraints(min_length=1, max_length=253, pattern=SECRET_DATA_KEY)
    ] = Field(description="Key within the Secret's data that holds the API key.")


class ApiKeySource(ApiModel):
    """Where one of the tenant's API keys is. The Secret must carry the label
    shoal.dev/api-key=true, and the key must be at least 32 characters long."""

    secret_ref: SecretKeySelector = Field(description="The Secret key holding the API key.")


class FleetReference(ApiModel):
    """The ModelFleet (in the tenant's namespace) the tenant may call."""

    name: ObjectName = Field(description="Name of the ModelFleet.")


class TenantLimitsSpec(ApiModel):
    """Rate limits of the tenant over the whole fleet (every ingress replica together);
    unset: unlimited."""

    requests_per_minute: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Requests the tenant may send per minute."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000_000,
        description="Prompt plus completion tokens the tenant may use per minute.",
    )
    concurrent_requests: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Requests the tenant may have in flight."
    )


class TenantBudget(ApiModel):
    """What the tenant may spend, in estimated USD of the fleet's replica time."""

    max_cost_per_hour: Money = Field(
        description="Most the tenant may spend in the last hour in USD, as a decimal string, "
        'e.g. "5.00"; past it, requests are refused (HTTP 429, insufficient_quota).'
    )
    soft_limit_percent: int = Field(
        default=80,
        ge=1,
        le=100,
        description="Past this share of maxCostPerHour, the tenant's requests are routed with "
        "a lower quality weight (down to routing.minAlpha) before they are refused at 100%.",
    )


def _alpha_order(r: TenantRouting) -> bool:
    if r.min_alpha is None or r.max_alpha is None:
        return True
    return Decimal(r.min_alpha) <= Decimal(r.max_alpha)


class TenantRouting(ApiModel):
    """Bounds on the router's quality weight (alpha) for this tenant's requests: a request's
    own alpha, the policy's, or a budget-lowered one is clamped into [minAlpha, maxAlpha]."""

    min_alpha: Fraction | None = Field(
        default=None, description='Floor on alpha, a decimal in [0, 1], e.g. "0.3".'
    )
    max_alpha: Fraction | None = Field(
        default=None, description='Ceiling on alpha, a decimal in [0, 1], e.g. "0.8".'
    )
    cascade_streaming: Literal["Replay", "FirstModel"] | None = Field(
        default=None,
        description="How this tenant's streaming requests meet a cascading policy: Replay "
        "(the verified answer, replayed as a stream) or FirstModel (the first model streamed, "
        "no cascade). None: the policy's cascade.streaming.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.minAlpha) || !has(self.maxAlpha) "
            "|| double(self.minAlpha) <= double(self.maxAlpha)",
            message="routing.minAlpha must be less than or equal to routing.maxAlpha",
            check=_alpha_order,
            field_path=".minAlpha",
        ),
    )


def _distinct_keys(spec: TenantSpec) -> bool:
    refs = [(k.secret_ref.name, k.secret_ref.key) for k in spec.api_keys]
    return len(refs) == len(set(refs))


class TenantSpec(ApiModel):
    """Desired state of a tenant: which fleet, which keys, within what."""

    fleet_ref: FleetReference = Field(description="The fleet the tenant may call.")
    api_keys: list[ApiKeySource] = Field(
        min_length=1,
        max_length=MAX_API_KEYS,
        description="The tenant's API keys, each from a Secret; a request bearing any of them "
        "(Authorization: Bearer) is the tenant's. List the new key beside the old one while "
        "rotating, then remove the old one.",
    )
    limits: TenantLimitsSpec = Field(
        default_factory=TenantLimitsSpec,
        description="Requests, tokens and concurrent requests the tenant may use.",
        json_schema_extra={"default": {}},
    )
    budget: TenantBudget | None = Field(
        default=None, description="Optional cap on what the tenant may spend per hour."
    )
    routing: TenantRouting = Field(
        default_factory=TenantRouting,
        description="Floor and ceiling on the router's quality weight for the tenant.",
        json_schema_extra={"default": {}},
    )
    allowed_models: list[Name] = Field(
        default_factory=list,
        max_length=64,
        description="Models (of the fleet) the tenant may use. Empty, with allowedTiers "
        "empty too: every model. Both set: the models listed plus those of the tiers listed.",
    )
    allowed_tiers: list[Name] = Field(
        default_factory=list,
        max_length=8,
        description="Tiers (of the fleet) whose models the tenant may use.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.apiKeys.all(k, self.apiKeys.exists_one(j, "
            "j.secretRef.name == k.secretRef.name && j.secretRef.key == k.secretRef.key))",
            message="apiKeys must name each Secret key once",
            check=_distinct_keys,
            field_path=".apiKeys",
        ),
        Rule(
            cel="!has(self.allowedModels) "
            "|| self.allowedModels.all(m, self.allowedModels.exists_one(n, n == m))",
            message="allowedModels must name each model once",
            check=lambda s: len(s.allowed_models) == len(set(s.allowed_models)),
            field_path=".allowedModels",
        ),
        Rule(
            cel="!has(self.allowedTiers) "
            "|| self.allowedTiers.all(t, self.allowedTiers.exists_one(n, n == t))",
            message="allowedTiers must name each tier once",
            check=lambda s: len(s.allowed_tiers) == len(set(s.allowed_tiers)),
            field_path=".allowedTiers",
        ),
    )


class TenantUsage(ApiModel):
    """What the tenant used in the last hour, as the fleet's ingress counted it (read from
    Prometheus by the operator)."""

    last_hour_cost_usd: str = Field(
        default="0.0000", description="Estimated USD the tenant's requests cost in the last hour."
    )
    last_hour_requests: int = Field(default=0, ge=0, description="Requests in the last hour.")
    last_hour_tokens: int = Field(
        default=0, ge=0, description="Prompt plus completion tokens in the last hour."
    )
    budget_used_percent: int | None = Field(
        default=None, ge=0, description="lastHourCostUsd as a percentage of maxCostPerHour."
    )
    last_hour_reference_cost_usd: str | None = Field(
        default=None,
        description="What the tenant's tokens of the last hour would have cost at the fleet's "
        "savings reference (spec.savings); none without one.",
    )
    updated_time: datetime | None = Field(default=None, description="When it was read.")


class TenantStatus(ApiModel):
    """Observed state of a tenant, written by the operator. Never holds a key or a digest."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready (the fleet serves the tenant's keys) and KeysResolved.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    keys: int = Field(default=0, ge=0, description="API keys resolved from their Secrets.")
    models: list[str] = Field(
        default_factory=list,
        description="Models of the fleet the tenant may use (none while it is not Ready).",
    )
    usage: TenantUsage | None = Field(default=None, description="Use in the last hour.")


class Tenant(ApiModel):
    """A team allowed to call a ModelFleet: its API keys (from Secrets), limits and budget."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    KIND: ClassVar[str] = "Tenant"
    PLURAL: ClassVar[str] = "tenants"

    api_version: Literal["shoal.dev/v1alpha1"] = "shoal.dev/v1alpha1"
    kind: Literal["Tenant"] = "Tenant"
    metadata: ObjectMeta
    spec: TenantSpec
    status: TenantStatus | None = None


__all__ = [
    "API_KEY_LABEL",
    "MAX_API_KEYS",
    "ApiKeySource",
    "FleetReference",
    "SecretKeySelector",
    "Tenant",
    "TenantBudget",
    "TenantLimitsSpec",
    "TenantRouting",
    "TenantSpec",
    "TenantStatus",
    "TenantUsage",
]
