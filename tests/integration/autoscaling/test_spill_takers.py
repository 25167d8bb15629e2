"""Spillover's bridge reads its takers from a real Prometheus: the ingress's own spill counter
(:class:`shoal.serving.metrics.RouterMetrics`, exported with ``prometheus_client``) scraped
with the chart's PodMonitor relabelings, the autoscaler's ``spill_pairs`` query
(``label_join`` over ``increase``), and the takers it derives for each model of the fleet;
another fleet's spills in the same Prometheus count for nothing.
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
MODELS = ["alpha", "beta", "gamma"]
WINDOWS = Windows(short=30, long=120, rate=60, burst=600)


def _exporter(fleet: str) -> tuple[Any, RouterMetrics, int]:
    import prometheus_client as pc

    metrics = RouterMetrics(fleet, backend="prometheus")
    port = free_port()
    server, _ = pc.start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    return server, metrics, port


@pytest.fixture()
def spills(tmp_path: Path) -> Iterator[tuple[Prometheus, RouterMetrics, RouterMetrics]]:
    servers = []
    try:
        ours, ours_metrics, ours_port = _exporter("f")
        servers.append(ours)
        other, other_metrics, other_port = _exporter("g")
        servers.append(other)
        targets = [fleet_pod(f"127.0.0.1:{ours_port}", NS, "f"),
                   fleet_pod(f"127.0.0.1:{other_port}", NS, "g")]  # fmt: skip
        with running_prometheus(targets, tmp_path / "prometheus") as prom:
            yield prom, ours_metrics, other_metrics
    finally:
        for s in servers:
            s.shutdown()


def test_each_model_s_usual_taker_comes_from_the_spills_prometheus_counted(
    spills: tuple[Prometheus, RouterMetrics, RouterMetrics],
) -> None:
    prom, ours, other = spills
    source = PrometheusSource(prom.url, windows=WINDOWS)

    def takers() -> dict[str, str]:
        window = source.collect(NS, "f", MODELS, datetime.now(UTC))
        assert window.error is None, window.error
        return dict(window.spill_takers)

    # Each pair's series is born with its first spill; Prometheus's increase() counts from
    # the first sample it scraped, so the test lets it see every series once before the
    # spills it measures.
    for first, to in (("alpha", "beta"), ("alpha", "gamma"), ("beta", "gamma")):
        ours.spilled(first, to)
    other.spilled("alpha", "gamma")
    series = "sum(shoal_spilled_requests_total)"
    wait_for("the spill series scraped", lambda: prom.value(series) >= 4, timeout=30)
    assert takers() == {}  # nothing spilled since the series appeared

    for _ in range(5):
        ours.spilled("alpha", "beta")
    ours.spilled("alpha", "gamma")
    ours.spilled("beta", "gamma")
    for _ in range(20):  # fleet g's spills, in the same namespace, same model names
        other.spilled("alpha", "gamma")
    wait_for("the spills scraped", lambda: prom.value(series) >= 31, timeout=30)
    want = {"alpha": "beta", "beta": "gamma"}
    assert wait_for(f"the takers {want}", lambda: takers() == want, timeout=30)
