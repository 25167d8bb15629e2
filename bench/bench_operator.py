"""Operator benchmark: how fast applied fleets become RayServices, and what it costs.

Against a real control plane (etcd + kube-apiserver on loopback) and the operator running as
its own process (``python -m shoal.operator``), as in production:

1. apply latency: 50 fleets applied one at a time; for each, the time from the create call to
   the RayService appearing (seen through a watch). p50 and p95.
2. convergence: 100 fleets of 20 models each applied at once; the time until every fleet has
   its RayService and a status for its current generation.
3. the operator's peak resident memory (VmHWM).

Prints a table, then as its last line one JSON object with apply_p50_s, apply_p95_s,
converge_100x20_s and peak_rss_mb. Run with ``make bench-operator``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from shoal.devtools.testing.controlplane import start_control_plane

GROUP, VERSION = "shoal.dev", "v1alpha1"
NS = "bench"


def fleet(name: str, models: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelFleet",
        "metadata": {"name": name},
        "spec": {
            "routingPolicyRef": {"name": "static"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.40"},
                      {"name": "large", "costPerReplicaHour": "2.10"}],
            "models": [{"name": f"m{i:02d}", "engine": "simulated",
                        "tier": "small" if i % 3 else "large"} for i in range(models)],
        },
    }  # fmt: skip


class RayServiceWatcher(threading.Thread):
    """Records when each RayService is first seen."""

    def __init__(self, api: client.CustomObjectsApi) -> None:
        super().__init__(daemon=True)
        self.api, self.seen, self.stop = api, {}, threading.Event()
        self.cond = threading.Condition()

    def run(self) -> None:
        w = watch.Watch()
        while not self.stop.is_set():
            for ev in w.stream(self.api.list_namespaced_custom_object, "ray.io", "v1", NS,
                               "rayservices", timeout_seconds=5):  # fmt: skip
                name = ev["object"]["metadata"]["name"]
                with self.cond:
                    self.seen.setdefault(name, time.perf_counter())
                    self.cond.notify_all()

    def wait_for(self, name: str, timeout: float = 60) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.seen, timeout):
                raise TimeoutError(f"RayService {name} not written within {timeout}s")
            return float(self.seen[name])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        cp = start_control_plane(Path(tmp) / "cp")
        operator = None
        try:
            cp.install_crds()
            cp.kubectl("create", "namespace", NS)
            api_client = cp.api_client()
            api = client.CustomObjectsApi(api_client)
            api.create_namespaced_custom_object(GROUP, VERSION, NS, "routingpolicies", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "RoutingPolicy",
                "metadata": {"name": "static"},
                "spec": {"strategy": "static", "staticOrder": ["m00", "m01"]},
            })  # fmt: skip
            env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "SHOAL_RESYNC_SECONDS": "300"}
            log = (Path(tmp) / "operator.log").open("w")
            operator = subprocess.Popen(
                [sys.executable, "-m", "shoal.operator", "-n", NS, "--metrics-port", "0"],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
            watcher = RayServiceWatcher(api)
            watcher.start()
            time.sleep(3)  # let the operator start watching

            latencies = []
            for i in range(50):
                name = f"a{i:02d}"
                t0 = time.perf_counter()
                api.create_namespaced_custom_object(
                    GROUP, VERSION, NS, "modelfleets", fleet(name, 4)
                )
                latencies.append(watcher.wait_for(name) - t0)
            q = statistics.quantiles(latencies, n=20)
            p50, p95 = statistics.median(latencies), q[18]

            t0 = time.perf_counter()
            for i in range(100):
                api.create_namespaced_custom_object(
                    GROUP, VERSION, NS, "modelfleets", fleet(f"c{i:03d}", 20)
                )
            pending = {f"c{i:03d}" for i in range(100)}
            while pending:
                items = api.list_namespaced_custom_object(GROUP, VERSION, NS, "modelfleets")[
                    "items"
                ]
                for it in items:
                    st = it.get("status") or {}
                    name = it["metadata"]["name"]
                    current = st.get("observedGeneration") == it["metadata"]["generation"]
                    if name in pending and name in watcher.seen and current:
                        pending.discard(name)
                if time.perf_counter() - t0 > 600:
                    raise TimeoutError(f"{len(pending)} fleets did not converge in 600s")
                time.sleep(0.2)
            converge = time.perf_counter() - t0
            rss = peak_rss_mb(operator.pid)
            watcher.stop.set()
        finally:
            if operator:
                operator.terminate()
                operator.wait(30)
            cp.stop()

    label = "apply -> RayService written, 50 fleets"
    print(f"{label:48} p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms")
    print(f"{'100 fleets x 20 models converge':48} {converge:7.2f} s")
    print(f"{'operator peak RSS':48} {rss:7.1f} MB")
    result = {
        "apply_p50_s": round(p50, 4),
        "apply_p95_s": round(p95, 4),
        "converge_100x20_s": round(converge, 2),
        "peak_rss_mb": round(rss, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
