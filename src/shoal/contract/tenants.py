"""Who may call a fleet, and within what: the tenants part of the serving contract.

The operator resolves a fleet's ``Tenant`` objects and their API-key Secrets into one
:class:`AccessConfig` and renders it as the ingress ("router") deployment's Ray Serve
``user_config`` (:meth:`AccessConfig.to_user_config`). Ray Serve hands a changed
``user_config`` to the running ingress replicas (``reconfigure``) without restarting them or
any model, so onboarding a team or rotating a key redeploys nothing.

Keys never travel: only :func:`key_digest` of each key (SHA-256, hex) does, and the operator
refuses keys shorter than :data:`MIN_KEY_LENGTH`, so a digest cannot be searched back to its
key. The ingress digests the presented ``Authorization: Bearer`` key and compares it with
every digest of every tenant in constant time.

Pure Pydantic models; nothing here imports Ray or Kubernetes.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Shortest API key the operator accepts from a Secret (``shoal tenant key`` makes 48).
MIN_KEY_LENGTH = 32
#: Name of the ``user_config`` entry holding the access config.
USER_CONFIG_KEY = "access"

#: The ingress's per-tenant series, as Prometheus stores them when scraped from the ingress
#: itself (from a Ray cluster, Ray's metrics agent prefixes them with ``ray_``). Labels:
#: ``fleet`` and ``tenant`` (the Tenant's name, never a key); requests also ``model`` and
#: ``code``, tokens also ``kind``. The operator reads them into each Tenant's status, the
#: chart's dashboard charts them.
TENANT_REQUESTS_METRIC = "shoal_tenant_requests_total"
TENANT_TOKENS_METRIC = "shoal_tenant_tokens_total"
TENANT_COST_METRIC = "shoal_tenant_cost_usd_total"
#: Environment variable of the Ray pods naming the Prometheus the operator reads; the ingress
#: restores tenants' recent usage from it when its usage store starts empty.
PROMETHEUS_URL_ENV = "SHOAL_PROMETHEUS_URL"
TENANT_METRICS = (TENANT_REQUESTS_METRIC, TENANT_TOKENS_METRIC, TENANT_COST_METRIC)

#: What the ingress does for limits while the shared usage store is unreachable:
#: ``share`` enforces limit / ingress replicas on each replica alone, ``open`` enforces the
#: whole limit on each replica (more may pass), ``closed`` refuses limited tenants with 503.
StoreFailureMode = Literal["share", "open", "closed"]


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of an API key, the only form of a key the operator passes on."""
    return hashlib.sha256(key.encode()).hexdigest()


class TenantLimits(BaseModel):
    """Per-tenant rate limits, over the whole fleet (every ingress replica together)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Prompt plus completion tokens per minute."
    )
    concurrent_requests: int | None = Field(default=None, ge=1)


class TenantAccess(BaseModel):
    """One tenant as the ingress enforces it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63, description="Tenant name (metric label).")
    key_digests: list[str] = Field(
        default_factory=list, description="SHA-256 hex digests of the tenant's API keys."
    )
    limits: TenantLimits = Field(default_factory=TenantLimits)
    max_cost_per_hour: Decimal | None = Field(
        default=None, ge=0, description="USD per hour the tenant may spend; none: unlimited."
    )
    budget_soft_percent: int = Field(
        default=80,
        ge=1,
        le=100,
        description="Above this share of the budget spent in the last hour, the tenant's "
        "queries are routed with a lower alpha (down to min_alpha); at 100% they are refused.",
    )
    min_alpha: float | None = Field(default=None, ge=0, le=1, description="Floor on alpha.")
    max_alpha: float | None = Field(default=None, ge=0, le=1, description="Ceiling on alpha.")
    cascade_streaming: Literal["Replay", "FirstModel"] | None = Field(
        default=None, description="Streaming under a cascade (None: the policy's choice)."
    )
    models: list[str] | None = Field(
        default=None,
        description="Models the tenant may use (resolved from its models and "
        "tiers); none: every model of the fleet.",
    )

    @model_validator(mode="after")
    def _check(self) -> TenantAccess:
        bad = [d for d in self.key_digests if len(d) != 64 or d.strip("0123456789abcdef")]
        if bad:
            raise ValueError("key_digests must be SHA-256 hex digests")
        if (
            self.min_alpha is not None
            and self.max_alpha is not None
            and self.min_alpha > self.max_alpha
        ):
            raise ValueError("min_alpha may not exceed max_alpha")
        return self


class AccessConfig(BaseModel):
    """Everything the ingress needs to authenticate and limit callers.

    ``mode: open`` serves anyone (the laptop quickstart); ``mode: tenants`` serves only a
    request bearing a key of one of ``tenants`` (none declared: every request gets 401).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["open", "tenants"] = "open"
    tenants: list[TenantAccess] = Field(default_factory=list)
    store_failure_mode: StoreFailureMode = "share"
    sync_interval_seconds: float = Field(
        default=0.2, gt=0, le=10, description="How often an ingress replica shares its usage."
    )

    @model_validator(mode="after")
    def _unique(self) -> AccessConfig:
        names = [t.name for t in self.tenants]
        if len(names) != len(set(names)):
            raise ValueError("tenant names must be unique")
        digests = [d for t in self.tenants for d in t.key_digests]
        if len(digests) != len(set(digests)):
            raise ValueError("an API key may belong to one tenant only")
        return self

    def to_user_config(self) -> dict[str, Any]:
        """The ingress deployment's ``user_config`` (JSON-ready)."""
        return {USER_CONFIG_KEY: self.model_dump(mode="json")}

    @classmethod
    def from_user_config(cls, user_config: dict[str, Any] | None) -> AccessConfig:
        """Read back what :meth:`to_user_config` wrote (absent: an open fleet)."""
        return cls.model_validate((user_config or {}).get(USER_CONFIG_KEY) or {})
