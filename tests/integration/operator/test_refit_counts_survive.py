"""The refit's feedback counts survive the ingress processes that counted them.

Real: Prometheus (the Debian package, scraping every second with the chart's relabelings)
and the ingress's own metrics (:class:`~shoal.serving.metrics.RouterMetrics`) served on one
pod address by one process after another, as a Ray pod's metrics port serves its ingress
replicas: a replica that restarts, or a Ray head that is lost and comes back, is a new
process with counters from zero. The operator's reader
(:class:`~shoal.operator.refit.PrometheusFeedback`) must still count what the processes that
are gone counted. (tests/integration/serving/test_state_survives.py does the same with real
Ray processes.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.devtools.testing.controlplane import free_port
from shoal.devtools.testing.prometheus import Prometheus, fleet_pod, running_prometheus
from shoal.operator.refit import PrometheusFeedback
from shoal.serving.metrics import RouterMetrics

pytestmark = pytest.mark.integration
NS = "team-ns"


class Pod:
    """One metrics address on which ingress processes come and go."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: Any = None
        self.metrics: RouterMetrics | None = None

    def start(self) -> RouterMetrics:
        """A new ingress process: its own registry, counters from zero."""
        import prometheus_client as pc

        self.stop()
        registry = pc.CollectorRegistry()
        self.metrics = RouterMetrics("f", backend="prometheus", registry=registry)
        self.server, _ = pc.start_http_server(self.port, addr="127.0.0.1", registry=registry)
        return self.metrics

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture()
def pod(tmp_path: Path) -> Iterator[tuple[Pod, Prometheus]]:
    p = Pod()
    p.start()
    try:
        with running_prometheus([fleet_pod(f"127.0.0.1:{p.port}", NS, "f")], tmp_path) as prom:
            yield p, prom
    finally:
        p.stop()


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.3)


def counts(url: str) -> dict[tuple[str, str], tuple[float, float]]:
    source = PrometheusFeedback(url)
    try:
        return {(r.model, r.cluster): (r.events, r.score_sum) for r in source.counts(NS, ["f"])}
    finally:
        source.close()


def logged_events(url: str) -> float:
    source = PrometheusFeedback(url)
    try:
        return sum(r.events for r in source.logged(NS, ["f"]))
    finally:
        source.close()


def test_feedback_counted_by_processes_that_are_gone_still_counts(
    pod: tuple[Pod, Prometheus],
) -> None:
    where, prom = pod
    url = prom.url
    first = where.metrics
    assert first is not None
    for score in (1.0, 0.0, 1.0):
        first.feedback("alpha", 3, score)
    first.logged_feedback("alpha", 3, 1.0, 0.5, False)
    wait_until("the first process's 3 events", lambda: counts(url).get(("alpha", "3")) == (3, 2))
    wait_until("its logged event", lambda: logged_events(url) == 1)

    # The replica restarts (same pod, a new process): its counters start from zero.
    second = where.start()
    assert second.instance != first.instance
    second.feedback("alpha", 3, 1.0)
    second.feedback("beta", 0, 0.5)
    second.logged_feedback("alpha", 3, 0.0, 1.0, True)
    wait_until(
        "the counts of both processes",
        lambda: counts(url) == {("alpha", "3"): (4, 3), ("beta", "0"): (1, 0.5)},
    )
    assert wait_until("both logged events", lambda: logged_events(url) == 2)

    # Everything goes (the Ray head with every ingress on it) and comes back empty.
    where.stop()
    wait_until("a scrape that finds nothing", lambda: prom.value(f'up{{namespace="{NS}"}}') == 0)
    third = where.start()
    third.feedback("beta", 0, 1.0)
    wait_until(
        "the counts of all three processes",
        lambda: counts(url) == {("alpha", "3"): (4, 3), ("beta", "0"): (2, 1.5)},
    )
