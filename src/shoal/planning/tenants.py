"""From a fleet's Tenant objects and their Secrets to what the ingress enforces, and back to
each tenant's status. Pure functions: the operator reads the objects, these decide.

- :func:`key_from_secret` turns one Secret (as read) into the digest of the API key it holds,
  or the reason the operator will not use it (not marked for Shoal, key missing, too short).
  The key itself goes no further than this function: only its SHA-256 digest comes out.
- :func:`resolve_tenant` judges one tenant against its fleet (exists, models and tiers it
  names exist) and its keys; :func:`access_config` gathers the Ready tenants of a fleet into
  the :class:`~shoal.contract.tenants.AccessConfig` rendered as the ingress's ``user_config``.
- :func:`tenant_status` is the tenant's status (conditions, key count, models, usage).

No message here ever carries a key, a digest, or any Secret data.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from shoal.api.v1alpha1 import ModelFleet
from shoal.api.v1alpha1.tenant import (
    API_KEY_LABEL,
    SecretKeySelector,
    Tenant,
    TenantStatus,
    TenantUsage,
)
from shoal.contract.tenants import (
    MIN_KEY_LENGTH,
    AccessConfig,
    StoreFailureMode,
    TenantAccess,
    TenantLimits,
    key_digest,
)
from shoal.planning.conditions import set_condition
from shoal.planning.status import READY, SpecProblem

KEYS_RESOLVED = "KeysResolved"
#: Reasons of a key the operator will not use.
KEY_REFUSALS = frozenset(
    {"KeySecretMissing", "KeySecretNotMarked", "KeyMissing", "KeyTooShort", "Forbidden"}
)


@dataclass(frozen=True)
class KeyResult:
    """One of a tenant's ``apiKeys`` as resolved: a digest, or the problem with it."""

    digest: str | None = None
    problem: SpecProblem | None = None


@dataclass(frozen=True)
class TenantResolution:
    """A tenant judged against its fleet and keys."""

    tenant: Tenant
    #: What the ingress gets for it (None: the tenant is not served).
    access: TenantAccess | None
    #: Why the tenant is not served (None: it is).
    problem: SpecProblem | None
    #: Problems with single keys while others serve (rotation overlap).
    key_problems: list[SpecProblem] = field(default_factory=list)
    keys: int = 0
    models: list[str] = field(default_factory=list)
    open_fleet: bool = False

    @property
    def ready(self) -> bool:
        return self.access is not None


def key_from_secret(
    secret: dict[str, Any] | None, ref: SecretKeySelector, namespace: str
) -> KeyResult:
    """The digest of the API key at ``ref`` in ``secret`` (as read; None: no such Secret)."""
    where = f"Secret {ref.name!r} in {namespace}"
    if secret is None:
        return KeyResult(
            problem=SpecProblem(
                "KeySecretMissing", f"{where} does not exist; create it with the key {ref.key!r}"
            )
        )
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(API_KEY_LABEL) != "true":
        return KeyResult(
            problem=SpecProblem(
                "KeySecretNotMarked",
                f"{where} is not marked for Shoal: its owner must label it {API_KEY_LABEL}=true "
                "before the operator uses it as an API key",
            )
        )
    raw = (secret.get("data") or {}).get(ref.key)
    if raw is None:
        return KeyResult(
            problem=SpecProblem("KeyMissing", f"{where} has no key {ref.key!r} in its data")
        )
    try:
        key = base64.b64decode(raw, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        return KeyResult(
            problem=SpecProblem("KeyMissing", f"{where}: key {ref.key!r} is not UTF-8 text")
        )
    if len(key) < MIN_KEY_LENGTH:
        return KeyResult(
            problem=SpecProblem(
                "KeyTooShort",
                f"{where}: the API key in {ref.key!r} is shorter than {MIN_KEY_LENGTH} "
                "characters; make a longer one (`shoal tenant key` makes 48)",
            )
        )
    return KeyResult(digest=key_digest(key))


def _allowed_models(
    tenant: Tenant, fleet: ModelFleet
) -> tuple[list[str] | None, SpecProblem | None]:
    spec = tenant.spec
    fleet_models = [m.name for m in fleet.spec.models]
    tiers = {t.name for t in fleet.spec.tiers}
    unknown_tiers = [t for t in spec.allowed_tiers if t not in tiers]
    if unknown_tiers:
        return None, SpecProblem(
            "UnknownTier",
            f"spec.allowedTiers names {', '.join(unknown_tiers)}, not a tier of fleet "
            f"{fleet.metadata.name!r} (its tiers: {', '.join(sorted(tiers))})",
        )
    unknown_models = [m for m in spec.allowed_models if m not in fleet_models]
    if unknown_models:
        return None, SpecProblem(
            "UnknownModel",
            f"spec.allowedModels names {', '.join(unknown_models)}, not a model of fleet "
            f"{fleet.metadata.name!r} (its models: {', '.join(fleet_models)})",
        )
    if not spec.allowed_models and not spec.allowed_tiers:
        return None, None
    chosen = set(spec.allowed_models) | {
        m.name for m in fleet.spec.models if m.tier in spec.allowed_tiers
    }
    return [m for m in fleet_models if m in chosen], None


def resolve_tenant(
    tenant: Tenant, fleet: ModelFleet | None, keys: list[KeyResult]
) -> TenantResolution:
    """Judge ``tenant`` (its fleet as it is, None: missing; ``keys`` in ``spec.apiKeys``
    order). Served when its fleet exists, every model and tier it names is the fleet's, and
    at least one key resolves; a key that fails while another serves is a key problem only."""
    spec = tenant.spec
    ns = tenant.metadata.namespace or "default"
    if fleet is None:
        missing = SpecProblem(
            "UnknownFleet",
            f"spec.fleetRef names ModelFleet {spec.fleet_ref.name!r}, which does not exist in "
            f"namespace {ns}",
        )
        return TenantResolution(tenant=tenant, access=None, problem=missing)
    models, problem = _allowed_models(tenant, fleet)
    digests = [k.digest for k in keys if k.digest]
    key_problems = [k.problem for k in keys if k.problem]
    listed = models if models is not None else [m.name for m in fleet.spec.models]
    open_fleet = fleet.spec.access.mode == "Open"
    if problem is None and not digests:
        problem = key_problems[0] if key_problems else SpecProblem("NoKeys", "no API keys")
    if problem is not None:
        return TenantResolution(
            tenant=tenant,
            access=None,
            problem=problem,
            key_problems=key_problems,
            keys=len(digests),
            models=[],  # not served: no model
            open_fleet=open_fleet,
        )
    budget = spec.budget
    access = TenantAccess(
        name=tenant.metadata.name,
        key_digests=sorted(set(digests)),
        limits=TenantLimits(
            requests_per_minute=spec.limits.requests_per_minute,
            tokens_per_minute=spec.limits.tokens_per_minute,
            concurrent_requests=spec.limits.concurrent_requests,
        ),
        max_cost_per_hour=Decimal(budget.max_cost_per_hour) if budget else None,
        budget_soft_percent=budget.soft_limit_percent if budget else 80,
        min_alpha=float(spec.routing.min_alpha) if spec.routing.min_alpha else None,
        max_alpha=float(spec.routing.max_alpha) if spec.routing.max_alpha else None,
        cascade_streaming=spec.routing.cascade_streaming,
        models=models,
    )
    return TenantResolution(
        tenant=tenant,
        access=access,
        problem=None,
        key_problems=key_problems,
        keys=len(digests),
        models=listed,
        open_fleet=open_fleet,
    )


@dataclass(frozen=True)
class AccessSettings:
    """Operator-wide settings of every fleet's access config (Helm ``tenants.*``)."""

    store_failure_mode: StoreFailureMode = "share"
    sync_interval_seconds: float = 0.2


def access_config(
    fleet: ModelFleet, resolutions: list[TenantResolution], settings: AccessSettings
) -> AccessConfig | None:
    """What the fleet's ingress enforces; None for an open fleet without tenants (nothing to
    render: the ingress serves anyone, as before tenants existed).

    Ready tenants only, sorted by name (the same tenants give the same config). A key that
    two tenants claim serves neither, since which team a request is would be a guess; their
    statuses say so (:func:`duplicate_keys`, reason ``KeyShared``).
    """
    mode = "tenants" if fleet.spec.access.mode == "Tenants" else "open"
    ready = sorted((r.access for r in resolutions if r.access is not None), key=lambda a: a.name)
    if mode == "open" and not ready:
        return None
    shared = duplicate_keys(resolutions)
    tenants = [
        a.model_copy(update={"key_digests": [d for d in a.key_digests if d not in shared]})
        for a in ready
    ]
    return AccessConfig(
        mode=mode,
        tenants=[t for t in tenants if t.key_digests],
        store_failure_mode=settings.store_failure_mode,
        sync_interval_seconds=settings.sync_interval_seconds,
    )


def duplicate_keys(resolutions: list[TenantResolution]) -> set[str]:
    """Digests that more than one Ready tenant of a fleet holds."""
    seen: dict[str, int] = {}
    for r in resolutions:
        for d in r.access.key_digests if r.access else []:
            seen[d] = seen.get(d, 0) + 1
    return {d for d, n in seen.items() if n > 1}


def tenant_status(
    resolution: TenantResolution,
    previous: TenantStatus | None,
    now: datetime,
    *,
    shared_key: bool = False,
) -> TenantStatus:
    """The tenant's status for its resolution (usage is kept from ``previous``: the usage
    loop writes it)."""
    tenant = resolution.tenant
    gen = tenant.metadata.generation
    conds = list(previous.conditions) if previous else []

    def put(type: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(
            conds, type=type, status=ok, reason=reason, message=message, generation=gen, now=now
        )

    fleet = tenant.spec.fleet_ref.name
    total = len(tenant.spec.api_keys)
    key_problem = resolution.key_problems[0] if resolution.key_problems else None
    if shared_key:
        key_problem = SpecProblem(
            "KeyShared",
            "an API key of this tenant is also another tenant's key of the same fleet; it "
            "serves neither until one of them changes it",
        )
    if key_problem is not None:
        put(KEYS_RESOLVED, False, key_problem.reason, key_problem.message)
    elif resolution.problem is None or resolution.keys:
        put(KEYS_RESOLVED, True, "KeysResolved", f"{resolution.keys} of {total} keys resolved")
    if resolution.problem is not None:
        put(READY, False, resolution.problem.reason, resolution.problem.message)
    else:
        how = (
            "; the fleet is open (spec.access.mode Open), so keys are not required yet"
            if resolution.open_fleet
            else ""
        )
        put(
            READY,
            True,
            "KeysServed",
            f"fleet {fleet!r} serves {resolution.keys} of {total} keys{how}",
        )
    return TenantStatus(
        observed_generation=gen,
        conditions=conds,
        keys=resolution.keys,
        models=resolution.models,
        usage=previous.usage if previous else None,
    )


def usage_status(
    tenant: Tenant,
    *,
    cost_usd: float,
    requests: float,
    tokens: float,
    now: datetime,
    reference_usd: float | None = None,
) -> TenantUsage:
    """``status.usage`` from the last hour's counts (``reference_usd``: what the same tokens
    would have cost at the fleet's savings reference; None: the fleet names none)."""
    cost = Decimal(str(max(cost_usd, 0.0))).quantize(Decimal("0.0001"))
    budget = tenant.spec.budget
    percent = None
    if budget is not None and Decimal(budget.max_cost_per_hour) > 0:
        percent = int(cost * 100 / Decimal(budget.max_cost_per_hour))
    return TenantUsage(
        last_hour_cost_usd=f"{cost:.4f}",
        last_hour_requests=round(max(requests, 0.0)),
        last_hour_tokens=round(max(tokens, 0.0)),
        budget_used_percent=percent,
        last_hour_reference_cost_usd=None
        if reference_usd is None
        else f"{Decimal(str(max(reference_usd, 0.0))).quantize(Decimal('0.0001')):.4f}",
        updated_time=now,
    )
