"""A fleet's tenants as the operator reads them: Tenant objects, their key Secrets, their
usage in Prometheus; and the tenants' status as it writes it.

Called by :mod:`shoal.operator.fleets` on every reconcile of a fleet (the fleet's access
config is rendered from :func:`resolve_tenants`), by the Tenant handlers, and by the
periodic loop (:mod:`shoal.operator.handlers`): every few seconds each fleet with tenants is
reconciled again, which re-reads its tenants' Secrets with a ``get`` each, so a rotated key
reaches the fleet without a watch on Secrets (and without the RBAC one would need); nothing
is written unless a digest changed.

Secrets are read only here, and only for the keys a Tenant names. What comes back is used by
:func:`shoal.planning.tenants.key_from_secret` and dropped: the operator's cache never holds
a Secret, and no message, status, event or metric carries a key or a digest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from shoal.api.v1alpha1 import API_VERSION, ConditionStatus, ModelFleet, Tenant
from shoal.api.v1alpha1.tenant import TenantStatus
from shoal.autoscaling.prometheus import (
    PrometheusError,
    PrometheusSource,
    fleet_scope,
    router_metric_names,
)
from shoal.contract.cost import TENANT_REFERENCE_COST_METRIC
from shoal.contract.tenants import TENANT_COST_METRIC, TENANT_REQUESTS_METRIC, TENANT_TOKENS_METRIC
from shoal.operator import events
from shoal.operator.gateway import Forbidden, KubeGateway
from shoal.planning.conditions import condition
from shoal.planning.status import READY, SpecProblem
from shoal.planning.tenants import (
    KEYS_RESOLVED,
    KeyResult,
    TenantResolution,
    duplicate_keys,
    key_from_secret,
    resolve_tenant,
    tenant_status,
    usage_status,
)

log = logging.getLogger(__name__)
TENANT = (API_VERSION, Tenant.KIND)


def _fleet_of(body: dict[str, Any]) -> str | None:
    return ((body.get("spec") or {}).get("fleetRef") or {}).get("name")


def tenant_bodies(gw: KubeGateway, namespace: str) -> list[dict[str, Any]]:
    """Every Tenant of ``namespace``: from the watch cache where it holds them all, else
    listed from the API server."""
    cache = gw.cache
    if cache is not None and TENANT in cache.authoritative:
        found = (cache.get((*TENANT, ns, name)) for ns, name in cache.keys(*TENANT))
        return [
            b for b in found if b and (b["metadata"].get("namespace") or "default") == namespace
        ]
    return gw.list(*TENANT, namespace)


def tenants_of(gw: KubeGateway, namespace: str, fleet: str) -> list[dict[str, Any]]:
    """The Tenants that name ``fleet`` (not being deleted), by name."""
    out = [
        b
        for b in tenant_bodies(gw, namespace)
        if _fleet_of(b) == fleet and not b["metadata"].get("deletionTimestamp")
    ]
    return sorted(out, key=lambda b: str(b["metadata"]["name"]))


def fleets_with_tenants(gw: KubeGateway) -> list[tuple[str, str]]:
    """(namespace, fleet name) of every fleet some cached Tenant names."""
    cache = gw.cache
    if cache is None:
        return []
    out = set()
    for ns, name in cache.keys(*TENANT):
        body = cache.get((*TENANT, ns, name))
        fleet = _fleet_of(body or {})
        if fleet:
            out.add((ns, fleet))
    return sorted(out)


def _parse(body: dict[str, Any]) -> Tenant | None:
    try:
        return Tenant.model_validate(dict(body))
    except ValidationError as exc:  # stored before a stricter schema
        log.info(
            "Tenant %s cannot be read: %s", body["metadata"].get("name"), exc.errors()[0]["msg"]
        )
        return None


def read_keys(gw: KubeGateway, tenant: Tenant) -> list[KeyResult]:
    """Each of the tenant's ``apiKeys`` resolved from its Secret (a ``get`` per Secret)."""
    ns = tenant.metadata.namespace or "default"
    secrets: dict[str, dict[str, Any] | SpecProblem | None] = {}
    out = []
    for source in tenant.spec.api_keys:
        ref = source.secret_ref
        if ref.name not in secrets:
            try:
                secrets[ref.name] = gw.read_secret(ns, ref.name)
            except Forbidden:
                secrets[ref.name] = SpecProblem(
                    "Forbidden",
                    f"the operator may not read Secret {ref.name!r} in {ns}: grant it get on "
                    "Secrets (Helm value rbac.tenantSecrets=true)",
                )
        secret = secrets[ref.name]
        if isinstance(secret, SpecProblem):
            out.append(KeyResult(problem=secret))
        else:
            out.append(key_from_secret(secret, ref, ns))
    return out


def key_fingerprint(gw: KubeGateway, namespace: str, fleet: str) -> tuple[Any, ...]:
    """What the fleet's tenants' Secrets say now, in a comparable form: per tenant (name and
    generation) the digest or refusal reason of each key. Equal fingerprints: a reconcile
    would render the same keys, so the periodic Secret re-read needs none."""
    out = []
    for body in tenants_of(gw, namespace, fleet):
        tenant = _parse(body)
        if tenant is None:
            continue
        keys = tuple(
            (k.digest, k.problem.reason if k.problem else None) for k in read_keys(gw, tenant)
        )
        out.append((tenant.metadata.name, tenant.metadata.generation, keys))
    return tuple(out)


def resolve_tenants(
    gw: KubeGateway, fleet: ModelFleet, bodies: Iterable[dict[str, Any]] | None = None
) -> list[TenantResolution]:
    """Every readable Tenant of ``fleet``, judged against it and its keys."""
    ns = fleet.metadata.namespace or "default"
    if bodies is None:
        bodies = tenants_of(gw, ns, fleet.metadata.name)
    out = []
    for body in bodies:
        tenant = _parse(body)
        if tenant is not None:
            out.append(resolve_tenant(tenant, fleet, read_keys(gw, tenant)))
    return out


def report(gw: KubeGateway, resolutions: list[TenantResolution], now: datetime) -> None:
    """Write each tenant's status where it changed, with an event when it became (not)
    Ready or a key started failing."""
    shared = duplicate_keys(resolutions)
    for r in resolutions:
        is_shared = bool(r.access and shared & set(r.access.key_digests))
        _write(gw, r.tenant, tenant_status(r, r.tenant.status, now, shared_key=is_shared))


def report_orphans(gw: KubeGateway, namespace: str, fleet: str, now: datetime) -> None:
    """Tenants naming a fleet that does not exist: Ready=False, reason UnknownFleet."""
    for body in tenants_of(gw, namespace, fleet):
        tenant = _parse(body)
        if tenant is not None:
            _write(gw, tenant, tenant_status(resolve_tenant(tenant, None, []), tenant.status, now))


def _write(gw: KubeGateway, tenant: Tenant, status: TenantStatus) -> None:
    new = status.model_dump(mode="json", by_alias=True)
    old = tenant.status.model_dump(mode="json", by_alias=True) if tenant.status else None
    if new == old:
        return
    ns = tenant.metadata.namespace or "default"
    body = {"apiVersion": API_VERSION, "kind": Tenant.KIND,
            "metadata": tenant.metadata.model_dump(by_alias=True, exclude_none=True)}  # fmt: skip
    # Usage is the usage loop's to write (update_usage): left out of the merge patch, so a
    # reconcile holding an older copy never rolls it back.
    patch = {k: v for k, v in new.items() if k != "usage"}
    gw.patch_status(*TENANT, ns, tenant.metadata.name, patch)
    _events(body, tenant.status, status)


def _events(body: dict[str, Any], old: TenantStatus | None, new: TenantStatus) -> None:
    for type, good in ((READY, "KeysServed"), (KEYS_RESOLVED, "KeysResolved")):
        before = condition(old.conditions, type) if old else None
        after = condition(new.conditions, type)
        if after is None or (
            before and (before.status, before.reason) == (after.status, after.reason)
        ):
            continue
        if after.status == ConditionStatus.TRUE and type == READY:
            events.post(body, warning=False, reason=good, message=after.message)
        elif after.status == ConditionStatus.FALSE:
            events.post(body, warning=True, reason=after.reason, message=after.message)


def usage_queries(namespace: str, fleet: str) -> dict[str, str]:
    """PromQL of a fleet's per-tenant use over the last hour, keyed by what it measures.

    Both spellings of each series: ``shoal_...`` as the ingress names it, ``ray_shoal_...``
    as Ray's metrics agent exports it from a Ray cluster; one term per spelling joined with
    ``or`` (only one of them exists where the fleet runs). Scoped to the fleet by the labels
    Kubernetes sets (:func:`~shoal.autoscaling.prometheus.fleet_scope`)."""
    sel = "{" + fleet_scope(namespace, fleet) + "}"

    def both(metric: str) -> str:
        return " or ".join(
            f"sum by (tenant) (increase({name}{sel}[1h]))" for name in router_metric_names(metric)
        )

    return {
        "cost": both(TENANT_COST_METRIC),
        "requests": both(TENANT_REQUESTS_METRIC),
        "tokens": both(TENANT_TOKENS_METRIC),
        "reference": both(TENANT_REFERENCE_COST_METRIC),
    }


def read_usage(source: PrometheusSource, namespace: str, fleet: str) -> dict[str, dict[str, float]]:
    """tenant -> {cost, requests, tokens, reference} in the last hour (reference: what the
    tokens would have cost at the fleet's savings reference, absent without one);
    PrometheusError when unreadable."""
    out: dict[str, dict[str, float]] = {}
    for what, promql in usage_queries(namespace, fleet).items():
        for tenant, (_, value) in source.query(promql, "tenant").items():
            out.setdefault(tenant, {})[what] = value or 0.0
    return out


def update_usage(
    gw: KubeGateway, source: PrometheusSource, namespace: str, fleet: str, now: datetime
) -> int:
    """Write the last hour's use into the status of each of the fleet's tenants; returns how
    many statuses changed. A Prometheus that cannot answer leaves the statuses as they are."""
    try:
        usage = read_usage(source, namespace, fleet)
    except PrometheusError as exc:
        log.info("tenant usage of fleet %s/%s not read: %s", namespace, fleet, exc)
        return 0
    written = 0
    for body in tenants_of(gw, namespace, fleet):
        tenant = _parse(body)
        if tenant is None:
            continue
        used = usage.get(tenant.metadata.name, {})
        new = usage_status(
            tenant,
            cost_usd=used.get("cost", 0.0),
            requests=used.get("requests", 0.0),
            tokens=used.get("tokens", 0.0),
            now=now,
            reference_usd=used.get("reference"),
        )
        old = tenant.status.usage if tenant.status else None
        if old is not None and old.model_copy(update={"updated_time": None}) == new.model_copy(
            update={"updated_time": None}
        ):
            continue
        gw.patch_status(
            *TENANT,
            namespace,
            tenant.metadata.name,
            {"usage": new.model_dump(mode="json", by_alias=True)},
        )
        written += 1
    return written
