"""Prometheus stopped while the autoscaler runs: replicas are held where they are (not
scaled down although the load is gone), the fleet's autoscaler status says why, and scaling
resumes once Prometheus is back.

Real Prometheus (Debian's) scraping simulated engines on loopback, the real operator (kopf
in this process) against the real API server; the test plays KubeRay's part (no kubelets)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.devtools.testing import require
from shoal.devtools.testing.controlplane import ControlPlane, free_port
from shoal.devtools.testing.prometheus import Target, fleet_pod, scrape_config
from shoal.operator.gateway import KubeGateway
from tests.integration.autoscaling.conftest import scaling_fleet, static_policy
from tests.integration.autoscaling.fleet_emulator import KubeRayPlayer, LoadedFleet
from tests.integration.autoscaling.test_prometheus_autoscaling import (
    ENGINE,
    alpha_replicas,
    in_flight,
)
from tests.integration.operator.conftest import Cluster, running_operator, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Prometheus:
    """Debian's Prometheus on a fixed loopback port, stoppable and restartable on it."""

    def __init__(self, binary: str, workdir: Path, targets: list[Target]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = scrape_config(targets)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.argv = [binary, f"--config.file={workdir / 'prometheus.yml'}",
                     f"--storage.tsdb.path={workdir / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]  # fmt: skip
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        wait_for(
            "Prometheus to be ready", lambda: urllib.request.urlopen(f"{self.url}/-/ready"), 60
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture()
def prometheus_and_load(tmp_path: Path, namespace: str) -> Iterator[tuple[Prometheus, LoadedFleet]]:
    binary = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    require(
        binary is not None, "Prometheus not installed (Debian package prometheus; hack/setup.sh)"
    )
    assert binary is not None
    fleet = LoadedFleet("f", {"alpha": ("small", ENGINE), "beta": ("small", ENGINE)})
    ports = {k: free_port() for k in ("router", "alpha", "beta")}
    fleet.start(ports)
    # Scraped as the chart's PodMonitor scrapes the fleet's pods (the operator's queries are
    # scoped by the namespace and fleet labels it sets).
    targets = [fleet_pod(f"127.0.0.1:{p}", namespace, "f") for p in ports.values()]
    prom = Prometheus(binary, tmp_path, targets)
    prom.start()
    try:
        yield prom, fleet
    finally:
        prom.stop()
        fleet.stop()


def _autoscaler(cluster: Cluster) -> dict[str, Any]:
    return dict(((cluster.get("fleet", "f") or {}).get("status") or {}).get("autoscaler") or {})


def _alpha_reason(cluster: Cluster) -> str:
    models = {m["name"]: m for m in _autoscaler(cluster).get("models") or []}
    return str(models.get("alpha", {}).get("reason", ""))


def _metrics_condition(cluster: Cluster) -> tuple[str, str] | None:
    status = (cluster.get("fleet", "f") or {}).get("status") or {}
    for c in status.get("conditions") or []:
        if c["type"] == "MetricsAvailable":
            return c["status"], c["reason"]
    return None


def test_prometheus_outage_holds_replicas_then_scaling_resumes(
    cluster: Cluster,
    control_plane: ControlPlane,
    prometheus_and_load: tuple[Prometheus, LoadedFleet],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prom, load = prometheus_and_load
    import kubernetes.config.kube_config as kube_config

    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(control_plane.kubeconfig))
    monkeypatch.setenv("SHOAL_PROMETHEUS_URL", prom.url)
    monkeypatch.setenv("SHOAL_AUTOSCALER_STALE_SECONDS", "10")
    player = KubeRayPlayer(KubeGateway(control_plane.api_client()), cluster.ns, "f", load)
    with running_operator(control_plane, cluster.ns):
        cluster.apply(static_policy(), scaling_fleet(up=2, down=4))
        wait_for("the RayService", lambda: cluster.get("rayservice", "f"), 60)
        player.start()
        try:
            wait_for(
                "the autoscaler to take over",
                lambda: _autoscaler(cluster).get("mode") == "Active",
                60,
            )
            load.set_rate("beta", 0.5)
            load.set_rate("alpha", 20.0)
            wait_for(
                "the load to show in Prometheus", lambda: in_flight(prom.url, "alpha") > 2, 60, 0.2
            )
            wait_for("alpha to scale up", lambda: alpha_replicas(cluster) > 1, 90, 0.2)

            # Prometheus goes away, then so does the load: nothing may scale down blindly.
            prom.stop()
            load.set_rate("alpha", 0.0)
            reason = wait_for("the autoscaler to say metrics are unavailable",
                              lambda: (r := _alpha_reason(cluster)) and "metrics unavailable" in r and r, 60, 0.2)  # fmt: skip
            held = alpha_replicas(cluster)
            assert held > 1
            assert reason.startswith(f"holding at {held}"), reason
            assert _metrics_condition(cluster) == ("False", "MetricsUnavailable")
            # Several evaluations later (each one stamps lastEvaluationTime), still held.
            seen: set[str] = set()
            wait_for("three evaluations during the outage",
                     lambda: seen.add(_autoscaler(cluster).get("lastEvaluationTime", "")) or len(seen) >= 4,
                     60, 0.2)  # fmt: skip
            assert alpha_replicas(cluster) == held
            assert "metrics unavailable" in _alpha_reason(cluster)

            # Prometheus is back: the autoscaler sees the idle model and scales it down.
            prom.start()
            wait_for("alpha to scale back down", lambda: alpha_replicas(cluster) == 1, 120, 0.2)
            assert "metrics unavailable" not in _alpha_reason(cluster)
            wait_for("the MetricsAvailable condition to turn True",
                     lambda: _metrics_condition(cluster) == ("True", "MetricsRead"), 30, 0.2)  # fmt: skip
        finally:
            player.stop()
    assert not player.errors, player.errors
