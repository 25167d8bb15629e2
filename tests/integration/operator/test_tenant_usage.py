"""Chargeback end to end from Prometheus on: per-tenant series scraped by a real Prometheus
(the Debian package, on loopback, every second) are read by the operator into each Tenant's
``status.usage``, and ``shoal usage`` prints them, from the statuses and from Prometheus.

The series come from an exporter of this test that speaks the ingress's names and labels
(``shoal_tenant_*{fleet,tenant}``, as :mod:`shoal.serving` exports them): what is under test
is the operator's side, from the PromQL on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server
from typer.testing import CliRunner

from shoal.autoscaling.prometheus import PrometheusSource
from shoal.devtools.testing.controlplane import free_port
from shoal.devtools.testing.prometheus import fleet_pod, running_prometheus
from shoal.operator.gateway import KubeGateway
from shoal.operator.tenants import update_usage
from tests.integration.operator.conftest import Cluster, fleet, wait_for
from tests.integration.operator.test_tenants import static_policy, tenant

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture()
def prometheus(tmp_path: Path, namespace: str) -> Iterator[tuple[str, dict[str, Counter]]]:
    """A Prometheus scraping this test's per-tenant exporter every second."""
    registry = CollectorRegistry()
    counters = {
        "cost": Counter("shoal_tenant_cost_usd", "USD", ["fleet", "tenant"], registry=registry),
        "requests": Counter("shoal_tenant_requests", "requests",
                            ["fleet", "tenant", "model", "code"], registry=registry),
        "tokens": Counter("shoal_tenant_tokens", "tokens", ["fleet", "tenant", "kind"],
                          registry=registry),
    }  # fmt: skip
    exporter = free_port()
    server, thread = start_http_server(exporter, addr="127.0.0.1", registry=registry)
    try:
        pod = fleet_pod(f"127.0.0.1:{exporter}", namespace, "f")
        with running_prometheus([pod], tmp_path / "prometheus") as prom:
            yield prom.url, counters
    finally:
        server.shutdown()
        thread.join(5)


def _usage(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(((cluster.get("tenant", name) or {}).get("status") or {}).get("usage") or {})


def test_usage_reaches_the_tenant_status_and_the_cli(
    cluster: Cluster, prometheus: tuple[str, dict[str, Counter]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, counters = prometheus
    cluster.apply(static_policy(), fleet(access={"mode": "Tenants"}),
                  tenant("team", "team-key", budget={"maxCostPerHour": "2.00"}))  # fmt: skip
    counters["cost"].labels("f", "team").inc(0)
    counters["requests"].labels("f", "team", "alpha", "200").inc(0)
    counters["tokens"].labels("f", "team", "prompt").inc(0)
    gw = KubeGateway(cluster.cp.api_client())
    source = PrometheusSource(url)

    def spent() -> bool:
        # The ingress counts as requests come in; the operator reads the last hour.
        counters["cost"].labels("f", "team").inc(0.25)
        counters["requests"].labels("f", "team", "alpha", "200").inc(5)
        counters["tokens"].labels("f", "team", "prompt").inc(100)
        update_usage(gw, source, cluster.ns, "f", NOW)
        return float(_usage(cluster, "team").get("lastHourCostUsd", "0")) > 0.5

    wait_for("the tenant's spend in its status", spent, 60, every=1.0)
    usage = _usage(cluster, "team")
    assert usage["lastHourRequests"] > 0 and usage["lastHourTokens"] > 0
    assert usage["budgetUsedPercent"] >= 25
    assert usage["updatedTime"] == "2026-12-01T00:00:00Z"

    from shoal.cli import app

    monkeypatch.setenv("KUBECONFIG", str(cluster.cp.kubeconfig))
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["usage", "-n", cluster.ns])
    assert out.exit_code == 0, out.output
    assert "team" in out.output and usage["lastHourCostUsd"] in out.output
    assert "2.00" in out.output  # the budget per hour
    live = CliRunner().invoke(app, ["usage", "-n", cluster.ns, "--fleet", "f", "--prometheus", url])
    assert live.exit_code == 0 and "team" in live.output, live.output
    source.close()
