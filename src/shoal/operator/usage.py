"""What each fleet and tenant spent, as a person reads it: the rows ``shoal usage`` prints.

From the Tenant objects' status (the operator writes ``status.usage`` from Prometheus every
minute; :mod:`shoal.operator.tenants`) and the fleets' ``status.spend``
(:mod:`shoal.operator.spend`), or, with a Prometheus URL, straight from the ingress's
series. Savings are :class:`shoal.contract.cost.Savings`: spend against what the same tokens
would have cost at the fleet's reference. Pure apart from the two readers at the bottom; the CLI
(:mod:`shoal.cli`) prints the rows with rich.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shoal.api.v1alpha1 import API_VERSION, ModelFleet, Tenant
from shoal.contract.cost import Savings


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
    #: What the tenant's tokens would have cost at the fleet's savings reference.
    reference_usd: Decimal | None = None

    @property
    def savings(self) -> Savings | None:
        """Spend against the reference (None: the fleet names no reference)."""
        if self.reference_usd is None:
            return None
        return Savings(float(self.cost_usd), float(self.reference_usd))

    @property
    def budget_used(self) -> str:
        """Share of the hourly budget spent, e.g. "42%" ("-" without a budget)."""
        if self.budget_usd is None or self.budget_usd <= 0:
            return "-"
        return f"{self.cost_usd * 100 / self.budget_usd:.0f}%"


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def saved(savings: Savings | None) -> str:
    """Savings as a cell: "87.5%" of the reference's cost saved, "-" without a reference."""
    if savings is None or savings.saved_percent is None:
        return "-"
    return f"{savings.saved_percent:.1f}%"


@dataclass(frozen=True)
class FleetRow:
    """One fleet's last hour: its answers' cost and the savings against its reference."""

    namespace: str
    fleet: str
    cost_usd: Decimal
    external_usd: Decimal
    reference_usd: Decimal | None
    updated: str

    @property
    def savings(self) -> Savings | None:
        if self.reference_usd is None:
            return None
        return Savings(float(self.cost_usd), float(self.reference_usd))


def rows_from_fleets(bodies: list[dict[str, Any]], fleet: str | None = None) -> list[FleetRow]:
    """Rows from ModelFleet objects (their ``status.spend``), optionally one fleet only."""
    rows = []
    for body in bodies:
        name = str(body["metadata"]["name"])
        if fleet and name != fleet:
            continue
        spend = (body.get("status") or {}).get("spend") or {}
        rows.append(
            FleetRow(
                namespace=str(body["metadata"].get("namespace") or "default"),
                fleet=name,
                cost_usd=Decimal(str(spend.get("lastHourCostUsd") or "0")),
                external_usd=Decimal(str(spend.get("lastHourExternalCostUsd") or "0")),
                reference_usd=_decimal(spend.get("lastHourReferenceCostUsd")),
                updated=str(spend.get("updatedTime") or "never"),
            )
        )
    return sorted(rows, key=lambda r: (r.namespace, r.fleet))


def fleet_rows_with_prometheus(url: str, bodies: list[dict[str, Any]], now: str) -> list[FleetRow]:
    """Fleet rows read straight from Prometheus (the operator's own computation)."""
    from shoal.autoscaling.prometheus import PrometheusSource
    from shoal.operator.spend import read_spend, spend_status

    source = PrometheusSource(url)
    rows = []
    try:
        for body in bodies:
            fleet = ModelFleet.model_validate(body)
            namespace = fleet.metadata.namespace or "default"
            reading = read_spend(source, namespace, fleet.metadata.name)
            status = spend_status(fleet, reading, datetime.now(UTC))
            rows.append(
                FleetRow(
                    namespace=namespace,
                    fleet=fleet.metadata.name,
                    cost_usd=Decimal(status.last_hour_cost_usd),
                    external_usd=Decimal(status.last_hour_external_cost_usd),
                    reference_usd=_decimal(status.last_hour_reference_cost_usd),
                    updated=now,
                )
            )
    finally:
        source.close()
    return sorted(rows, key=lambda r: (r.namespace, r.fleet))


def list_fleets(namespace: str | None) -> list[dict[str, Any]]:
    """ModelFleet objects of ``namespace`` (None: every namespace)."""
    from shoal.operator import credentials
    from shoal.operator.gateway import KubeGateway

    gw = KubeGateway(credentials.api_client())
    if namespace is not None:
        return gw.list(API_VERSION, ModelFleet.KIND, namespace)
    return gw.list_all(API_VERSION, ModelFleet.KIND)


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
                reference_usd=_decimal(usage.get("lastHourReferenceCostUsd")),
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
                reference_usd=None
                if used.get("reference") is None
                else Decimal(str(used["reference"])).quantize(Decimal("0.0001")),
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
