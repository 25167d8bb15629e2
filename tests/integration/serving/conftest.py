"""Fixtures for serving tests against a real local Ray instance (one per test module).

Ray starts with a short metrics report interval so tests can read Ray's Prometheus endpoint
within seconds. A test module that cannot start Ray skips visibly, or fails where servers
are required (``SHOAL_REQUIRE_SERVERS=1``).
"""

from __future__ import annotations

import importlib.util
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from shoal.devtools.testing import require
from shoal.devtools.testing.controlplane import free_port


@dataclass
class LocalRay:
    """A local Ray instance with Serve's HTTP proxy and Ray's metrics endpoint."""

    http_port: int
    metrics_port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def wait_metric(
        self, name: str, predicate: Callable[[float], bool], timeout: float = 30.0, **labels: str
    ) -> float:
        deadline = time.monotonic() + timeout
        value = self.metric(name, **labels)
        while not predicate(value) and time.monotonic() < deadline:
            time.sleep(1.0)
            value = self.metric(name, **labels)
        return value

    def settle(self, fleet: str, *names: str, timeout: float = 60.0) -> None:
        """Wait until ``fleet`` has no request in flight and the counters ``names`` (summed
        over the fleet) read the same over three scrapes a report interval apart: what a test
        reads next as "before" then holds every earlier request's increments (Ray exports a
        process's metrics once a second, so a late export would otherwise land in the test's
        own window)."""
        deadline = time.monotonic() + timeout
        seen: list[tuple[float, ...]] = []
        while time.monotonic() < deadline:
            busy = self.metric("ray_shoal_requests_in_flight", fleet=fleet)
            seen.append((busy, *(self.metric(n, fleet=fleet) for n in names)))
            if busy == 0 and len(seen) >= 3 and len(set(seen[-3:])) == 1:
                return
            time.sleep(1.1)
        raise AssertionError(f"{fleet}'s metrics did not settle within {timeout:.0f}s: {seen[-3:]}")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[LocalRay]:
    missing = [
        m for m in ("ray", "llama_cpp", "openai", "gguf") if importlib.util.find_spec(m) is None
    ]
    require(
        not missing,
        f"serving extras not installed ({', '.join(missing)}): pip install -e '.[serving]'",
    )
    import ray
    from ray import serve

    cluster = LocalRay(http_port=free_port(), metrics_port=free_port())
    from shoal.local.ray_env import local_ray_env

    with local_ray_env():  # the Ray Serve settings the fleet ships with
        ray.init(
            address="local",
            num_cpus=16,  # logical: placement only, replicas are light
            include_dashboard=False,
            object_store_memory=128 * 1024 * 1024,
            log_to_driver=False,
            _metrics_export_port=cluster.metrics_port,
            _system_config={"metrics_report_interval_ms": 1000},
        )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": cluster.http_port})
        yield cluster
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
