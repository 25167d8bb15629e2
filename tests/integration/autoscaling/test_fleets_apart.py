"""Fleets that share a Prometheus stay apart: two fleets named alike, with the same model
names, in two namespaces, and a pod in a third namespace that exports series claiming to be
one of them.

Real: Prometheus (the Debian package, on loopback, every second) scraping with the chart's
PodMonitor relabelings and ``honor_labels: false`` (the targets carry the pod metadata
Kubernetes service discovery would give them, :mod:`shoal.devtools.testing.prometheus`), the
serving layer's simulated engines and router metrics under a Poisson load, and the operator's
three readers: the autoscaler's :class:`PrometheusSource` with the scaling policy, the
refit's :class:`PrometheusFeedback` and the tenants' usage reader.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shoal.api.v1alpha1 import ModelFleetSpec
from shoal.autoscaling.policy import decide
from shoal.autoscaling.prometheus import PrometheusSource, windows_for
from shoal.autoscaling.types import ModelState
from shoal.devtools.testing.controlplane import free_port
from shoal.devtools.testing.prometheus import (
    Prometheus,
    Target,
    fleet_pod,
    running_prometheus,
)
from shoal.operator.refit import PrometheusFeedback
from shoal.operator.tenants import read_usage
from tests.integration.autoscaling.conftest import INTERVAL, scaling_fleet
from tests.integration.autoscaling.fleet_emulator import LoadedFleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS_A, NS_B, NS_X = "team-a", "team-b", "elsewhere"
ENGINE = {"fixed_step_ms": 40, "output_tokens": 8, "max_batch": 2}


@dataclass
class World:
    prometheus: Prometheus
    fleets: dict[str, LoadedFleet]
    forged: dict[str, Any]


def _forger(port: int) -> tuple[Any, dict[str, Any]]:
    """A pod's exporter whose series say they are fleet ``f`` of ``NS_B``, busy."""
    import prometheus_client as pc

    reg = pc.CollectorRegistry()
    claim = ["namespace", "fleet"]
    out: dict[str, Any] = {
        "running": pc.Gauge("vllm:num_requests_running", "", [*claim, "model_name"], registry=reg),
        "waiting": pc.Gauge("vllm:num_requests_waiting", "", [*claim, "model_name"], registry=reg),
        "decisions": pc.Counter("shoal_routing_decisions", "", [*claim, "model", "strategy",
                                                                "cluster"], registry=reg),
        "in_flight": pc.Gauge("shoal_requests_in_flight", "", [*claim, "model", "tier"],
                              registry=reg),
        "feedback": pc.Counter("shoal_feedback", "", [*claim, "model", "cluster"], registry=reg),
        "score": pc.Counter("shoal_feedback_score", "", [*claim, "model", "cluster"],
                            registry=reg),
        "cost": pc.Counter("shoal_tenant_cost_usd", "", [*claim, "tenant"], registry=reg),
    }  # fmt: skip
    server, _ = pc.start_http_server(port, addr="127.0.0.1", registry=reg)
    return server, out


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    fleets: dict[str, LoadedFleet] = {}
    targets: list[str | Target] = []
    try:
        for ns in (NS_A, NS_B):
            fleet = LoadedFleet("f", {"alpha": ("small", ENGINE), "beta": ("small", ENGINE)})
            ports = {k: free_port() for k in ("router", "alpha", "beta")}
            fleet.start(ports)
            fleets[ns] = fleet
            targets += [fleet_pod(f"127.0.0.1:{p}", ns, "f") for p in ports.values()]
        port = free_port()
        server, forged = _forger(port)
        # A pod of another namespace, labelled as a Ray pod of fleet f.
        targets.append(fleet_pod(f"127.0.0.1:{port}", NS_X, "f", pod="forger"))
        try:
            with running_prometheus(targets, tmp_path / "prometheus") as prom:
                yield World(prom, fleets, forged)
        finally:
            server.shutdown()
    finally:
        for fleet in fleets.values():
            fleet.stop()


def test_load_on_one_fleet_scales_it_and_not_its_namesake(world: World) -> None:
    prom, f = world.prometheus, world.forged
    for name in ("running", "waiting"):
        f[name].labels(NS_B, "f", "beta").set(40)
    f["in_flight"].labels(NS_B, "f", "beta", "small").set(80)
    f["decisions"].labels(NS_B, "f", "beta", "cluster", "0").inc(5000)
    f["feedback"].labels(NS_B, "f", "beta", "0").inc(500)
    f["score"].labels(NS_B, "f", "beta", "0").inc(500)
    f["cost"].labels(NS_B, "f", "mallory").inc(99)
    for fleet in world.fleets.values():
        for model in ("alpha", "beta"):
            fleet.set_replicas(model, 1)
    world.fleets[NS_A].set_rate("alpha", 20.0)
    world.fleets[NS_A].set_rate("beta", 0.5)

    spec = ModelFleetSpec.model_validate(scaling_fleet()["spec"])
    windows = windows_for(spec, INTERVAL)
    source = PrometheusSource(prom.url, windows=windows)
    states = {"alpha": ModelState(1), "beta": ModelState(1)}

    def alpha_load(ns: str) -> float:
        m = source.collect(ns, "f", ["alpha", "beta"], datetime.now(UTC)).models["alpha"]
        return m.in_flight or 0.0

    def unscoped() -> float:
        # A selector by model name alone, as the operator's queries were before they were
        # scoped to the fleet.
        return prom.value('sum({__name__=~"vllm[:_]num_requests_(running|waiting)", '
                          'model_name=~"alpha|beta"})')  # fmt: skip

    # Wait for team-a's load and the forger's series (a scrape under load may miss one).
    deadline = time.monotonic() + 60
    while not (alpha_load(NS_A) > 2 and unscoped() >= 80) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alpha_load(NS_A) > 2, "the load on team-a never showed in Prometheus"
    # The trap is real: that selector takes the forger's 80 requests in flight as the
    # fleet's.
    assert unscoped() >= 80

    # Evaluate both fleets until team-a's alpha scales up; team-b never moves.
    deadline, scaled = time.monotonic() + 30, False
    while not scaled and time.monotonic() < deadline:
        now = datetime.now(UTC)
        a = decide(spec, states, source.collect(NS_A, "f", ["alpha", "beta"], now), now)
        b_window = source.collect(NS_B, "f", ["alpha", "beta"], now)
        b = decide(spec, states, b_window, now)
        for model in ("alpha", "beta"):
            assert (b_window.models[model].in_flight or 0.0) < 1.0, b_window.models[model]
            assert b.by_model()[model].desired == 1, b.by_model()[model].reason
        scaled = a.by_model()["alpha"].desired > 1
        time.sleep(0.5)
    assert scaled, a.by_model()["alpha"].reason
    # The forger's series exist, relabelled to its own namespace.
    running = '__name__=~"vllm[:_]num_requests_running"'
    assert prom.value(f'sum({{{running}, namespace="{NS_X}"}})') == 40
    assert prom.value(f'sum({{{running}, namespace="{NS_X}", exported_namespace="{NS_B}"}})') == 40

    # Neither the refit's feedback nor the tenants' spend of team-b take the forger's counts.
    feedback = PrometheusFeedback(prom.url)
    assert feedback.counts(NS_B, ["f"]) == []
    assert read_usage(source, NS_B, "f") == {}
    feedback.close()
    source.close()
