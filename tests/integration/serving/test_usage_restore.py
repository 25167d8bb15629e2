"""Tenants' spend survives the loss of the usage store: a store that starts empty (its actor
lost, or the Ray head with everything on it) is seeded from Prometheus before a replica
enforces anything, once, whichever replica gets there first.

Real: Prometheus (the Debian package, on loopback, every second) scraping an exporter of
this test that speaks the ingress's per-tenant series for fleet ``f`` of ``team-ns`` (as a
pod of that fleet, with the chart's relabelings), the tenant gate and the usage store in
this process (:class:`LocalStore`; under Ray the same store is the actor's). The Ray actor
and the kill of a Ray head are not run here (see the module docstring of
:mod:`shoal.serving.restore`): what a lost store leaves is an empty store, which is what
each test starts from."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from shoal.contract import AccessConfig, key_digest
from shoal.devtools.testing.controlplane import free_port
from shoal.devtools.testing.prometheus import fleet_pod, running_prometheus
from shoal.serving.restore import prometheus_restorer, read_baseline
from shoal.serving.tenants import TenantGate, TenantRefused
from shoal.serving.usage import LocalStore, UsageStore, UsageSync

pytestmark = pytest.mark.integration
NS, KEY = "team-ns", "k" * 40


@pytest.fixture()
def spent(tmp_path: Path) -> Iterator[str]:
    """A Prometheus that holds $0.95 of tenant ``team``'s $1.00 hourly budget, spent by a
    replica that is gone since (its counters are all Prometheus has)."""
    registry = CollectorRegistry()
    cost = Counter("shoal_tenant_cost_usd", "USD", ["fleet", "tenant"], registry=registry)
    requests = Counter("shoal_tenant_requests", "requests", ["fleet", "tenant", "model", "code"],
                       registry=registry)  # fmt: skip
    cost.labels("f", "team").inc(0)
    requests.labels("f", "team", "alpha", "200").inc(0)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        with running_prometheus([fleet_pod(f"127.0.0.1:{port}", NS, "f")], tmp_path / "p") as p:
            deadline = time.monotonic() + 60
            series = 'count({__name__=~"shoal_tenant_cost_usd(_total)?"})'
            while p.value(series) == 0 and time.monotonic() < deadline:
                time.sleep(0.3)  # the counters at zero first: increase() starts from there
            cost.labels("f", "team").inc(0.95)
            requests.labels("f", "team", "alpha", "200").inc(1)
            while time.monotonic() < deadline:
                if read_baseline(p.url, NS, "f").get("team", (0.0, 0.0, 0.0))[2] > 0.9:
                    break
                time.sleep(0.3)
            yield p.url
    finally:
        server.shutdown()
        thread.join(5)


def _gate() -> tuple[TenantGate, Any]:
    config = AccessConfig.model_validate({"mode": "tenants", "tenants": [
        {"name": "team", "key_digests": [key_digest(KEY)], "max_cost_per_hour": "1.00"}]})  # fmt: skip
    gate = TenantGate(config)
    return gate, gate.tenants["team"]


def test_an_empty_store_is_seeded_from_prometheus_once(spent: str) -> None:
    async def scenario() -> None:
        store = LocalStore(UsageStore())  # what a lost actor or Ray head comes back as
        restore = prometheus_restorer(spent, NS, "f")
        gate, team = _gate()
        one = UsageSync(gate, store, "r1", restore)
        assert await one.sync_once()
        assert gate.spent(team, time.time()) > 0.9
        with pytest.raises(TenantRefused) as refused:
            gate.admit(team, 10)
        assert refused.value.reason == "budget"

        # A second replica (or one that came back) finds the store seeded: nothing twice.
        gate2, team2 = _gate()
        two = UsageSync(gate2, store, "r2", restore)
        assert await two.sync_once()
        assert 0.9 < gate2.spent(team2, time.time()) < 1.5

    asyncio.run(scenario())


def test_without_a_restore_the_spend_is_forgotten(spent: str) -> None:
    """What the store did before: empty after a loss, so the spent budget is there again."""

    async def scenario() -> None:
        gate, team = _gate()
        assert await UsageSync(gate, LocalStore(UsageStore()), "r1").sync_once()
        assert gate.spent(team, time.time()) == 0.0
        gate.admit(team, 10)  # admitted: the $0.95 already spent is forgotten

    asyncio.run(scenario())
