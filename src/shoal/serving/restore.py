"""Tenants' usage restored from Prometheus when a fleet's usage store starts empty.

The store (:mod:`shoal.serving.usage`) lives in one Ray actor: it comes back empty when the
actor is lost, and so does everything when the Ray head is lost. Without more, a tenant that
had spent its hourly budget could spend it again at once. Every ingress replica exports what
it admitted as Prometheus counters (``shoal_tenant_cost_usd_total``,
``shoal_tenant_requests_total``, ``shoal_tenant_tokens_total``), which Prometheus keeps
across all of that. So the first replica to reach a store that was never seeded reads, per
tenant, the fleet's last hour of cost and last minute of requests and tokens
(:func:`baseline_queries`: ``increase()``, which counts across counter resets, scoped to the
fleet by the scrape target's labels) and seeds the store with them
(:meth:`~shoal.serving.usage.UsageStore.seed`: once per store). The seeded amounts count from
the moment of seeding, so they expire no earlier than the real ones would: the restore errs
towards limiting.

The Prometheus the operator uses reaches the Ray pods as ``SHOAL_PROMETHEUS_URL`` (the
operator adds it to their environment where it has one); without it nothing is restored.
Called by :class:`~shoal.serving.usage.UsageSync`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from shoal.autoscaling.prometheus import PrometheusSource, fleet_scope, router_metric_names
from shoal.contract.tenants import (
    PROMETHEUS_URL_ENV,
    TENANT_COST_METRIC,
    TENANT_REQUESTS_METRIC,
    TENANT_TOKENS_METRIC,
)

#: Per tenant: (requests in the last minute, tokens in the last minute, USD in the last hour).
Baseline = dict[str, tuple[float, float, float]]
Restorer = Callable[[], Awaitable[Baseline]]


def baseline_queries(namespace: str, fleet: str) -> dict[str, str]:
    """PromQL of a fleet's per-tenant usage windows, keyed by what they measure (pure)."""
    sel = "{" + fleet_scope(namespace, fleet) + "}"

    def over(metric: str, window: str) -> str:
        return " or ".join(
            f"sum by (tenant) (increase({name}{sel}[{window}]))"
            for name in router_metric_names(metric)
        )

    return {
        "requests": over(TENANT_REQUESTS_METRIC, "1m"),
        "tokens": over(TENANT_TOKENS_METRIC, "1m"),
        "cost": over(TENANT_COST_METRIC, "1h"),
    }


def read_baseline(url: str, namespace: str, fleet: str, timeout: float = 2.0) -> Baseline:
    """Per tenant, what the fleet used lately (see the module docstring); raises
    :class:`~shoal.autoscaling.prometheus.PrometheusError` when Prometheus cannot answer."""
    source = PrometheusSource(url, timeout=timeout)
    try:
        found: dict[str, dict[str, float]] = {}
        for what, promql in baseline_queries(namespace, fleet).items():
            for tenant, (_, value) in source.query(promql, "tenant").items():
                found.setdefault(tenant, {})[what] = value or 0.0
    finally:
        source.close()
    return {
        t: (u.get("requests", 0.0), u.get("tokens", 0.0), u.get("cost", 0.0))
        for t, u in found.items()
    }


def prometheus_restorer(url: str, namespace: str, fleet: str) -> Restorer:
    """A restorer that reads :func:`read_baseline` off the event loop."""

    async def restore() -> Baseline:
        return await asyncio.to_thread(read_baseline, url, namespace, fleet)

    return restore


def restorer_from_env(namespace: str, fleet: str) -> Restorer | None:
    """The restorer of this pod's fleet (None without ``SHOAL_PROMETHEUS_URL``)."""
    url = os.environ.get(PROMETHEUS_URL_ENV, "").strip()
    return prometheus_restorer(url, namespace, fleet) if url else None
