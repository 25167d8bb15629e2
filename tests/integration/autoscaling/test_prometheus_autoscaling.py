"""End to end: the operator autoscales a fleet from a real Prometheus scraping simulated
engines under a load the test drives.

Real: the API server and etcd, the operator (kopf's KopfRunner, in this process),
Prometheus (the Debian package, started here on loopback, scraping every second), and the
serving layer's simulated engine with its metrics. Played: KubeRay (this test has no Ray
cluster): the player sizes the engines to the RayService's ``num_replicas`` and writes the
RayService status KubeRay would write.

The fleet: two models in one tier (1.00 USD an hour a replica, 2 requests in flight per
replica as the target, 1 to 6 replicas, 2 s scale-up and 8 s scale-down cooldowns) under a
4.00 USD an hour budget; the autoscaler evaluates every 2 s.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.autoscaling.prometheus import windows_for
from shoal.devtools.testing.controlplane import ControlPlane, free_port
from shoal.devtools.testing.prometheus import fleet_pod, running_prometheus
from shoal.operator.gateway import KubeGateway
from tests.integration.autoscaling.conftest import INTERVAL, scaling_fleet, static_policy
from tests.integration.autoscaling.fleet_emulator import KubeRayPlayer, LoadedFleet
from tests.integration.operator.conftest import Cluster, running_operator, wait_for, yaml_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUDGET, PRICE, UP_COOLDOWN, DOWN_COOLDOWN = 4.0, 1.0, 2, 8
ENGINE = {"fixed_step_ms": 40, "output_tokens": 8, "max_batch": 2}


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture()
def prometheus_and_load(tmp_path: Path, namespace: str) -> Iterator[tuple[str, LoadedFleet]]:
    fleet = LoadedFleet("f", {"alpha": ("small", ENGINE), "beta": ("small", ENGINE)})
    ports = {k: free_port() for k in ("router", "alpha", "beta")}
    fleet.start(ports)
    try:
        targets = [fleet_pod(f"127.0.0.1:{p}", namespace, "f") for p in ports.values()]
        with running_prometheus(targets, tmp_path / "prometheus") as prom:
            yield prom.url, fleet
    finally:
        fleet.stop()


def in_flight(url: str, model: str) -> float:
    """What Prometheus reports right now for ``model``: running plus waiting requests."""
    q = f'sum({{__name__=~"vllm[:_]num_requests_(running|waiting)", model_name="{model}"}})'
    out = http_json(f"{url}/api/v1/query?query={urllib.parse.quote(q)}")
    result = out["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def alpha_replicas(cluster: Cluster) -> int:
    deps = {d["name"]: d for d in yaml_app(cluster.get("rayservice", "f") or {})["deployments"]}
    return int(deps["model-alpha"].get("num_replicas", 0))


def test_scales_up_under_load_down_after_within_budget(
    cluster: Cluster,
    control_plane: ControlPlane,
    prometheus_and_load: tuple[str, LoadedFleet],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, load = prometheus_and_load
    import kubernetes.config.kube_config as kube_config

    # The operator reads its kubeconfig and settings when it starts.
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(control_plane.kubeconfig))
    monkeypatch.setenv("SHOAL_PROMETHEUS_URL", url)
    monkeypatch.setenv("SHOAL_AUTOSCALER_STALE_SECONDS", "10")
    spec = scaling_fleet(budget=f"{BUDGET:.2f}", up=UP_COOLDOWN, down=DOWN_COOLDOWN)
    gw = KubeGateway(control_plane.api_client())
    player = KubeRayPlayer(gw, cluster.ns, "f", load)
    timings: dict[str, float] = {}
    with running_operator(control_plane, cluster.ns):
        cluster.apply(static_policy(), spec)
        wait_for("the RayService", lambda: cluster.get("rayservice", "f"), 60)
        player.start()
        wait_for("the autoscaler to take over", lambda: (
            ((cluster.get("fleet", "f") or {}).get("status") or {}).get("autoscaler") or {}
        ).get("mode") == "Active", 60)  # fmt: skip
        assert alpha_replicas(cluster) == 1

        # Load: 20 requests/s on alpha (one replica carries about 6), a trickle on beta.
        load.set_rate("beta", 0.5)
        load.set_rate("alpha", 20.0)
        started = time.monotonic()
        wait_for("the load to show in Prometheus", lambda: in_flight(url, "alpha") > 2, 30, 0.1)
        seen = time.monotonic()
        wait_for("alpha to scale up", lambda: alpha_replicas(cluster) > 1, 60, 0.1)
        timings["scale_up_after_load_visible"] = time.monotonic() - seen
        timings["scale_up_after_load_started"] = time.monotonic() - started

        # Under load for a while: the budget binds, and is never exceeded.
        costs, binding = [], False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = (cluster.get("fleet", "f") or {}).get("status") or {}
            auto = status.get("autoscaler") or {}
            costs.append(float(auto.get("desiredCostPerHour") or 0))
            binding = binding or bool(auto.get("budgetBinding"))
            time.sleep(0.5)
        peak_alpha = max(h[1]["alpha"] for h in player.history)

        # Load gone: back down to one replica.
        load.set_rate("alpha", 0.0)
        stopped = time.monotonic()
        wait_for("alpha to scale back down", lambda: alpha_replicas(cluster) == 1, 90, 0.2)
        timings["scale_down_after_load_stopped"] = time.monotonic() - stopped
        status = (cluster.get("fleet", "f") or {})["status"]
        events = json.loads(
            control_plane.kubectl("get", "events", "-n", cluster.ns, "-o", "json").stdout
        )["items"]
    player.stop()
    print(f"\ntimings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}; "
          f"peak alpha replicas {peak_alpha}; desired cost samples max {max(costs):.2f}")  # fmt: skip

    assert not player.errors, player.errors
    windows = windows_for(scaling_fleet_spec(spec), INTERVAL)
    # Scale-up within one evaluation interval plus the scale-up cooldown, counted from when
    # the load is visible in Prometheus, plus the short window the policy averages over and
    # a second to render and apply.
    assert timings["scale_up_after_load_visible"] <= INTERVAL + UP_COOLDOWN + windows.short + 1
    assert peak_alpha >= 3
    # Never over budget: every RayService the operator rendered fits it.
    for _, replicas in player.history:
        assert sum(replicas.values()) * PRICE <= BUDGET, player.history
    assert max(costs) <= BUDGET
    assert binding, "20 requests/s asks for more than the budget allows: it should bind"
    # Scale-down: at most half the replicas a step, each after the 8 s cooldown.
    assert timings["scale_down_after_load_stopped"] <= 4 * (DOWN_COOLDOWN + INTERVAL) + 10
    # Decisions are visible: last change of the tier in status, events for each change.
    last = {d["tier"]: d for d in status["lastScaling"]}["small"]
    assert (last["model"], last["toReplicas"]) == ("alpha", 1)
    assert last["reason"].startswith("scale down to 1")
    reasons = {e["reason"] for e in events}
    assert {"ScaledUp", "ScaledDown", "BudgetBinding"} <= reasons, reasons
    up = [e["message"] for e in events if e["reason"] == "ScaledUp"]
    assert any(m.startswith("alpha: 1 -> ") for m in up), up


def scaling_fleet_spec(obj: dict[str, Any]) -> Any:
    from shoal.api.v1alpha1 import ModelFleetSpec

    return ModelFleetSpec.model_validate(obj["spec"])
