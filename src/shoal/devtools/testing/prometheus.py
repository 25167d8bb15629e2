"""A real Prometheus (the Debian package) on loopback, scraping given targets every second.

For tests and benchmarks that need what a cluster's Prometheus would hold: the autoscaler's
windows, the refit's feedback counts. :func:`running_prometheus` starts it with a throwaway
TSDB under ``workdir`` and stops it after the ``with`` block; a machine without the binary
skips (or fails, where servers are required; :func:`shoal.devtools.testing.require`).

A :class:`Target` stands for a pod: its namespace, name and labels are given to Prometheus as
the ``__meta_kubernetes_*`` labels Kubernetes service discovery would set, and the scrape
applies the chart's PodMonitor relabelings (:data:`POD_RELABELINGS`, which the chart's unit
test holds the template to) with ``honor_labels: false``, as prometheus-operator renders it.
So the series carry ``namespace``, ``fleet`` and ``pod`` as they would in a cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.devtools.testing import require
from shoal.devtools.testing.controlplane import free_port

BINARY = "/usr/bin/prometheus"


#: The chart's PodMonitor relabelings (prometheus-operator's spelling), in order.
POD_RELABELINGS: list[dict[str, Any]] = [
    {"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"},
    {"sourceLabels": ["__meta_kubernetes_pod_label_shoal_dev_fleet"], "targetLabel": "fleet"},
    {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
]


def relabel_configs(relabelings: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """prometheus-operator's relabelings as Prometheus' own ``relabel_configs``."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{keys.get(k, k): v for k, v in r.items()} for r in relabelings]


def _meta_label(pod_label: str) -> str:
    # Kubernetes service discovery's spelling: every character outside [a-zA-Z0-9_] is "_".
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in pod_label)


@dataclass(frozen=True)
class Target:
    """A scrape target as Kubernetes service discovery would see a pod (see the module
    docstring); a bare ``host:port`` string is a target with no pod metadata."""

    address: str
    namespace: str = ""
    pod: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def meta(self) -> dict[str, str]:
        """The ``__meta_kubernetes_*`` labels of the target."""
        out = {_meta_label(k): v for k, v in self.labels.items()}
        if self.namespace:
            out["__meta_kubernetes_namespace"] = self.namespace
        if self.pod:
            out["__meta_kubernetes_pod_name"] = self.pod
        return out


def fleet_pod(address: str, namespace: str, fleet: str, pod: str = "") -> Target:
    """A target that stands for a Ray pod of fleet ``namespace/fleet``."""
    return Target(address, namespace, pod or f"{fleet}-{address.rsplit(':', 1)[-1]}",
                  {"shoal.dev/fleet": fleet, "ray.io/is-ray-node": "yes"})  # fmt: skip


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus: its base URL."""

    url: str

    def value(self, promql: str) -> float:
        """The first sample of an instant query (0 when the result is empty)."""
        q = urllib.parse.quote(promql)
        with urllib.request.urlopen(f"{self.url}/api/v1/query?query={q}", timeout=5) as resp:
            result = json.loads(resp.read())["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0


def scrape_config(targets: Sequence[str | Target]) -> dict[str, Any]:
    """A Prometheus configuration that scrapes ``targets`` every second with the chart's
    PodMonitor relabelings (``namespace``, ``fleet`` and ``pod`` from pod metadata)."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "shoal",
            "honor_labels": False,
            "relabel_configs": relabel_configs(POD_RELABELINGS),
            "static_configs": [
                {"targets": [t.address], "labels": t.meta()}
                for t in (Target(t) if isinstance(t, str) else t for t in targets)
            ],
        }],
    }  # fmt: skip


@contextmanager
def running_prometheus(targets: Sequence[str | Target], workdir: Path) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` every second, until the block ends."""
    import yaml

    binary = shutil.which("prometheus") or (BINARY if Path(BINARY).exists() else None)
    require(
        binary is not None, "Prometheus not installed (Debian package prometheus; hack/setup.sh)"
    )
    assert binary is not None
    port = free_port()
    config = scrape_config(targets)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Prometheus did not start; see {workdir / 'prometheus.log'}"
                    ) from None
                time.sleep(0.2)
        yield Prometheus(url)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
