"""What a fleet's answers cost in the last hour, and what it saved: the fleet's ``status.spend``.

Called on the operator's periodic loop (:mod:`shoal.operator.handlers`, schedule "fleet
spend", when a Prometheus URL is configured) and by ``shoal usage --prometheus`` for its
per-fleet rows. It reads the ingress's ``shoal_cost_usd_total`` (every answer's cost: token
bills of the models served outside the fleet, per-request estimates of its own) and
``shoal_reference_cost_usd_total`` (the same tokens at the fleet's ``spec.savings`` reference)
over the last hour, and judges them with :class:`shoal.contract.cost.Savings`, the one
definition of savings (the RouterBench study in docs/routing.md uses it too).

The status patch holds ``spend`` alone, so a reconcile that writes the rest never rolls it
back (:func:`shoal.planning.status.fleet_status` keeps the previous value).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shoal.api.v1alpha1 import API_VERSION, ModelFleet
from shoal.api.v1alpha1.external import FleetSpend
from shoal.autoscaling.prometheus import (
    PrometheusError,
    PrometheusSource,
    fleet_scope,
    router_metric_names,
)
from shoal.contract.cost import REFERENCE_COST_METRIC, Savings
from shoal.operator.gateway import KubeGateway

log = logging.getLogger(__name__)

_FOUR = Decimal("0.0001")


def spend_queries(namespace: str, fleet: str) -> dict[str, str]:
    """PromQL of a fleet's last hour, per model: what its answers cost, and the reference.
    Scoped to the fleet by the labels Kubernetes sets (:func:`fleet_scope`)."""
    sel = "{" + fleet_scope(namespace, fleet) + "}"

    def both(metric: str) -> str:
        return " or ".join(
            f"sum by (model) (increase({name}{sel}[1h]))" for name in router_metric_names(metric)
        )

    return {"cost": both("shoal_cost_usd_total"), "reference": both(REFERENCE_COST_METRIC)}


@dataclass(frozen=True)
class FleetSpendReading:
    """A fleet's last hour: cost per model, and the reference's cost (None: no reference)."""

    cost_by_model: dict[str, float]
    reference_usd: float | None

    def savings(self) -> Savings | None:
        if self.reference_usd is None:
            return None
        return Savings(sum(self.cost_by_model.values()), self.reference_usd)


def read_spend(source: PrometheusSource, namespace: str, fleet: str) -> FleetSpendReading:
    """The fleet's last hour from Prometheus; PrometheusError when it cannot answer."""
    queries = spend_queries(namespace, fleet)
    cost = {m: v or 0.0 for m, (_, v) in source.query(queries["cost"], "model").items()}
    ref = source.query(queries["reference"], "model")
    reference = sum((v or 0.0) for _, v in ref.values()) if ref else None
    return FleetSpendReading(cost, reference)


def spend_status(fleet: ModelFleet, reading: FleetSpendReading, now: datetime) -> FleetSpend:
    """``status.spend`` from a reading."""
    external = {m.name for m in fleet.spec.external_models()}
    total = Decimal(str(sum(reading.cost_by_model.values()))).quantize(_FOUR)
    outside = sum(v for m, v in reading.cost_by_model.items() if m in external)
    savings = reading.savings() if fleet.spec.savings is not None else None
    if fleet.spec.savings is not None and savings is None:
        savings = Savings(float(total), 0.0)  # a reference with no tokens answered yet
    pct = savings.saved_percent if savings is not None else None
    return FleetSpend(
        last_hour_cost_usd=f"{total:.4f}",
        last_hour_external_cost_usd=f"{Decimal(str(outside)).quantize(_FOUR):.4f}",
        last_hour_reference_cost_usd=None
        if savings is None
        else f"{Decimal(str(savings.reference_usd)).quantize(_FOUR):.4f}",
        saved_percent=None if pct is None else f"{pct:.1f}",
        updated_time=now,
    )


def update_spend(
    gw: KubeGateway, source: PrometheusSource, namespace: str, name: str, now: datetime
) -> bool:
    """Write the fleet's ``status.spend``; whether it changed. A Prometheus that cannot answer
    leaves it as it is."""
    body = gw.get(API_VERSION, ModelFleet.KIND, namespace, name)
    if body is None:
        return False
    try:
        fleet = ModelFleet.model_validate(body)
        reading = read_spend(source, namespace, name)
    except PrometheusError as exc:
        log.info("spend of fleet %s/%s not read: %s", namespace, name, exc)
        return False
    except ValueError:  # an invalid fleet: its reconcile reports it
        return False
    new = spend_status(fleet, reading, now)
    old = fleet.status.spend if fleet.status else None
    if old is not None and old.model_copy(update={"updated_time": None}) == new.model_copy(
        update={"updated_time": None}
    ):
        return False
    gw.patch_status(
        API_VERSION,
        ModelFleet.KIND,
        namespace,
        name,
        {"spend": new.model_dump(mode="json", by_alias=True)},
    )
    return True
