"""A LoRA adapter's load counts towards its base model when the autoscaler reads Prometheus.

The ingress counts an adapter's requests under its own name, ``<model>:<adapter>``
(:mod:`shoal.serving.adapters`), while the adapter runs on its base model's replicas. Real:
the ingress's own metrics (:class:`shoal.serving.metrics.RouterMetrics`, exported with
``prometheus_client``) scraped by Prometheus (the Debian package) with the chart's PodMonitor
relabelings, read back through the autoscaler's queries (:class:`PrometheusSource`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shoal.autoscaling.prometheus import PrometheusSource, Windows
from shoal.devtools.testing.controlplane import free_port
from shoal.devtools.testing.prometheus import Prometheus, fleet_pod, running_prometheus
from shoal.serving.metrics import RouterMetrics
from tests.integration.operator.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = "team-a"
MODELS = ["alpha", "beta"]
WINDOWS = Windows(short=30, long=120, rate=60, burst=600)


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[tuple[Prometheus, RouterMetrics]]:
    import prometheus_client as pc

    metrics = RouterMetrics("f", backend="prometheus")
    # In flight from the first scrape on: alpha 1, its adapter 3; and a model outside the
    # fleet's list whose name begins like alpha's.
    metrics.set_in_flight("alpha", "cpu", 1)
    metrics.set_in_flight("alpha:tone", "cpu", 3)
    metrics.set_in_flight("alphabet:tone", "cpu", 7)
    port = free_port()
    server: Any
    server, _ = pc.start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        with running_prometheus([fleet_pod(f"127.0.0.1:{port}", NS, "f")], tmp_path / "p") as p:
            yield p, metrics
    finally:
        server.shutdown()


def test_an_adapter_s_requests_count_as_its_base_model_s(
    fleet: tuple[Prometheus, RouterMetrics],
) -> None:
    prom, metrics = fleet
    source = PrometheusSource(prom.url, windows=WINDOWS)

    def window() -> Any:
        got = source.collect(NS, "f", MODELS, datetime.now(UTC))
        assert got.error is None, got.error
        return got.models

    # Every routing decision names the adapter, none its base model.
    metrics.decision("static", "alpha:tone", None, 0.001)
    series = "sum(shoal_routing_decisions_total)"
    wait_for("the decisions series scraped", lambda: prom.value(series) >= 1, timeout=30)
    for _ in range(30):
        metrics.decision("static", "alpha:tone", None, 0.001)
    wait_for("the decisions scraped", lambda: prom.value(series) >= 31, timeout=30)

    # (The in-flight average is over a subquery of 2 s steps: it has a value from the first
    # step after Prometheus's first scrape.)
    models = wait_for(
        "alpha's demand and in-flight requests",
        lambda: (m := window())["alpha"].demand_rate and m["alpha"].in_flight and m,
        30,
    )
    assert models["alpha"].demand_rate > 0
    assert not models["beta"].demand_rate
    # The router's in-flight gauge: alpha's own 1 and its adapter's 3, not alphabet's 7.
    assert models["alpha"].in_flight == pytest.approx(4.0)
    assert models["beta"].in_flight in (None, 0.0)
