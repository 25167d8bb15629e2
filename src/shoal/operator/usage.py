"""What each tenant used, as a person reads it: the rows ``shoal usage`` prints.

From the Tenant objects' status (the operator writes ``status.usage`` from Prometheus every
minute; :mod:`shoal.operator.tenants`) or, with a Prometheus URL, straight from the
ingress's per-tenant series. Pure apart from the two readers at the bottom; the CLI
(:mod:`shoal.cli`) prints the rows with rich.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shoal.api.v1alpha1 import API_VERSION, Tenant


@dataclass(frozen=True)
class UsageRow:
    """One tenant's last hour."""

    namespace: str
    tenant: str
    fleet: str
    ready: str
    keys: int
    requests: int
    tokens: int
    cost_usd: Decimal
    budget_usd: Decimal | None
    updated: str

    @property
    def budget_used(self) -> str:
        """Share of the hourly budget spent, e.g. "42%" ("-" without a budget)."""
        if self.budget_usd is None or self.budget_usd <= 0:
            return "-"
        return f"{self.cost_usd * 100 / self.budget_usd:.0f}%"


def _ready(status: dict[str, Any]) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return "True" if c.get("status") == "True" else f"False ({c.get('reason', '')})"
    return "Unknown"


def rows_from_tenants(bodies: list[dict[str, Any]], fleet: str | None = None) -> list[UsageRow]:
    """Rows from Tenant objects (their ``status.usage``), optionally of one fleet only."""
    rows = []
    for body in bodies:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        fleet_name = str((spec.get("fleetRef") or {}).get("name", ""))
        if fleet and fleet_name != fleet:
            continue
        usage = status.get("usage") or {}
        budget = (spec.get("budget") or {}).get("maxCostPerHour")
        rows.append(
            UsageRow(
                namespace=str(body["metadata"].get("namespace") or "default"),
                tenant=str(body["metadata"]["name"]),
                fleet=fleet_name,
                ready=_ready(status),
                keys=int(status.get("keys") or 0),
                requests=int(usage.get("lastHourRequests") or 0),
                tokens=int(usage.get("lastHourTokens") or 0),
                cost_usd=Decimal(str(usage.get("lastHourCostUsd") or "0")),
                budget_usd=Decimal(budget) if budget else None,
                updated=str(usage.get("updatedTime") or "never"),
            )
        )
    return sorted(rows, key=lambda r: (r.namespace, r.fleet, -r.cost_usd, r.tenant))


def with_prometheus(
    rows: list[UsageRow], usage: dict[tuple[str, str, str], dict[str, float]], now: str
) -> list[UsageRow]:
    """``rows`` with their numbers replaced by Prometheus's (keyed by (namespace, fleet,
    tenant))."""
    out = []
    for r in rows:
        used = usage.get((r.namespace, r.fleet, r.tenant))
        if used is None:
            out.append(r)
            continue
        out.append(
            UsageRow(
                namespace=r.namespace,
                tenant=r.tenant,
                fleet=r.fleet,
                ready=r.ready,
                keys=r.keys,
                requests=round(used.get("requests", 0.0)),
                tokens=round(used.get("tokens", 0.0)),
                cost_usd=Decimal(str(used.get("cost", 0.0))).quantize(Decimal("0.0001")),
                budget_usd=r.budget_usd,
                updated=now,
            )
        )
    return out


def list_tenants(namespace: str | None) -> list[dict[str, Any]]:
    """Tenant objects of ``namespace`` (None: every namespace) with the operator's
    credentials (in-cluster, or KUBECONFIG / ~/.kube/config)."""
    from shoal.operator import credentials
    from shoal.operator.gateway import KubeGateway

    gw = KubeGateway(credentials.api_client())
    if namespace is not None:
        return gw.list(API_VERSION, Tenant.KIND, namespace)
    return gw.list_all(API_VERSION, Tenant.KIND)


def prometheus_usage(
    url: str, fleets: set[tuple[str, str]]
) -> dict[tuple[str, str, str], dict[str, float]]:
    """(namespace, fleet, tenant) -> {cost, requests, tokens} of the last hour, from
    Prometheus; ``fleets``: (namespace, fleet) pairs."""
    from shoal.autoscaling.prometheus import PrometheusSource
    from shoal.operator.tenants import read_usage

    source = PrometheusSource(url)
    try:
        return {
            (namespace, fleet, tenant): used
            for namespace, fleet in sorted(fleets)
            for tenant, used in read_usage(source, namespace, fleet).items()
        }
    finally:
        source.close()
