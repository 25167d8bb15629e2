"""What a fleet keeps when its usage store, an ingress replica or the Ray head is lost.

Real: Prometheus (the Debian package, scraping every second with the chart's relabelings)
scrapes the metrics port of a local Ray as a Ray pod of fleet ``keep`` in ``team-ns``; the
Ray processes get its address as ``SHOAL_PROMETHEUS_URL``, as the operator gives it to the
Ray pods. The fleet runs from its ``serveConfigV2`` entry (a simulated model at $1 a second)
with two tenants: ``team``, with a budget of $2 an hour and a request rate limit, spends it;
``free`` (no limit) gets answers whose feedback is scored. Then, one after the other:

1. the usage store's actor is killed: the replica re-creates it, and the new store is seeded
   from Prometheus, so ``team`` stays refused and its windows are not empty;
2. the ingress replica is killed: Ray Serve starts another, which reads the store (alive);
3. the Ray head goes (``ray.shutdown``: every process of the cluster, the store and the
   ingress with them) and a new Ray cluster serves the fleet on another metrics port, a new
   Ray pod: its new store is seeded from Prometheus again.

After each, ``team`` is still refused for its budget, the store holds its spend, and the
feedback counts the operator's refit reads from Prometheus hold every score given so far.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.contract import (
    INGRESS_DEPLOYMENT,
    AccessConfig,
    BuildArgs,
    key_digest,
    serve_application,
)
from shoal.contract.tenants import PROMETHEUS_URL_ENV
from shoal.devtools.testing import require
from shoal.devtools.testing.controlplane import free_port
from shoal.devtools.testing.prometheus import Prometheus, fleet_pod, running_prometheus
from shoal.operator.refit import PrometheusFeedback
from shoal.serving.restore import read_baseline
from shoal.serving.usage import STORE_NAMESPACE, store_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS, FLEET = "team-ns", "keep"
TEAM = "sk-shoal-team-" + "t" * 40
FREE = "sk-shoal-free-" + "f" * 40
BUDGET = 2.0
#: A token every 200 ms at $1 a second: 20 tokens are $4, twice the budget.
SIM = {"fixed_step_ms": 200, "output_tokens": 20}


def fleet_args() -> BuildArgs:
    return BuildArgs.parse({
        "fleet_name": FLEET,
        "namespace": NS,
        "fleet": {
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "cpu", "costPerReplicaHour": "3600"}],
            "models": [{"name": "sim", "engine": "simulated", "tier": "cpu", "minReplicas": 1,
                        "maxReplicas": 1, "resources": {"cpu": "100m"}, "engineArgs": SIM}],
        },
        "policy": {"strategy": "static", "staticOrder": ["sim"]},
        "ingress": {"num_cpus": 0.1},
    })  # fmt: skip


ACCESS = AccessConfig.model_validate({
    "mode": "tenants",
    "sync_interval_seconds": 0.2,
    "tenants": [
        {"name": "team", "key_digests": [key_digest(TEAM)], "max_cost_per_hour": f"{BUDGET}",
         "limits": {"requests_per_minute": 50}},
        {"name": "free", "key_digests": [key_digest(FREE)]},
    ],
})  # fmt: skip


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what} (last: {value!r})")
        time.sleep(0.3)


@contextmanager
def ray_cluster(http_port: int, metrics_port: int, prometheus: str) -> Iterator[None]:
    """A local Ray (the fleet's Ray Serve settings, the operator's Prometheus address) that
    serves the fleet on ``http_port``; gone, with all its processes, when the block ends."""
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from shoal.local.ray_env import local_ray_env

    saved = os.environ.get(PROMETHEUS_URL_ENV)
    os.environ[PROMETHEUS_URL_ENV] = prometheus
    try:
        with local_ray_env():
            ray.init(
                address="local", num_cpus=8, include_dashboard=False,
                object_store_memory=128 * 1024 * 1024, log_to_driver=False,
                _metrics_export_port=metrics_port,
                _system_config={"metrics_report_interval_ms": 1000},
            )  # fmt: skip
    finally:
        if saved is None:
            os.environ.pop(PROMETHEUS_URL_ENV, None)
        else:
            os.environ[PROMETHEUS_URL_ENV] = saved
    try:
        schema = ServeDeploySchema.model_validate({
            "http_options": {"host": "127.0.0.1", "port": http_port},
            "applications": [serve_application(fleet_args(), ACCESS)],
        })  # fmt: skip
        client = serve_api.serve_start(http_options=schema.http_options.model_dump())
        client.deploy_apps(schema, _blocking=False)
        wait_until("the fleet running", lambda: running(), 180)
        yield
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def running() -> bool:
    from ray import serve

    apps = serve.status().applications
    if FLEET in apps and apps[FLEET].status == "DEPLOY_FAILED":
        pytest.fail(f"Serve application failed: {apps[FLEET].message}")
    return FLEET in apps and apps[FLEET].status == "RUNNING"


class Fleet:
    """The fleet's endpoint and what the test gave and got."""

    def __init__(self, prometheus: Prometheus) -> None:
        self.prometheus = prometheus
        self.base = ""
        self.scored = 0

    def post(self, key: str, max_tokens: int = 1) -> httpx.Response:
        body = {"model": "auto", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip
        return httpx.post(f"{self.base}/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {key}"})  # fmt: skip

    def refused_for_budget(self) -> bool:
        """True when ``team`` is refused for its budget; False while nothing answers (a
        replica starting); a failure when it is served."""
        try:
            r = self.post(TEAM)
        except httpx.TransportError:
            return False
        if r.status_code == 200:
            pytest.fail("team, over its budget, was served")
        if r.status_code != 429:
            return False
        assert r.json()["error"]["code"] == "insufficient_quota", r.text
        return True

    def score_an_answer(self) -> None:
        """A ``free`` answer scored 1 through ``/v1/feedback``."""
        answer = wait_until(
            "an answer for free", lambda: (r := self.post(FREE)).status_code == 200 and r
        )
        r = httpx.post(f"{self.base}/v1/feedback", json={"id": answer.json()["id"], "score": 1},
                       headers={"authorization": f"Bearer {FREE}"}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        self.scored += 1

    def feedback_events(self) -> float:
        source = PrometheusFeedback(self.prometheus.url)
        try:
            return sum(row.events for row in source.counts(NS, [FLEET]))
        finally:
            source.close()

    def all_feedback_counted(self) -> bool:
        return self.feedback_events() == self.scored


def store() -> Any:
    import ray

    return ray.get_actor(store_name(FLEET, NS), namespace=STORE_NAMESPACE)


def stored(actor: Any = None) -> tuple[float, float, float]:
    """``team``'s usage as the store ``actor`` (default: the fleet's, zeros while it does not
    exist) counts it now."""
    import ray

    if actor is None:
        try:
            actor = store()
        except ValueError:
            return (0.0, 0.0, 0.0)
    result: dict[str, tuple[float, float, float]] = ray.get(actor.usage.remote(), timeout=10)
    return result.get("team", (0.0, 0.0, 0.0))


def ingress_replicas() -> list[str]:
    import ray

    return sorted(
        n["name"] for n in ray.util.list_named_actors(all_namespaces=True)
        if n["namespace"] == "serve" and f"#{INGRESS_DEPLOYMENT}#" in n["name"]
    )  # fmt: skip


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, list[int]]]:
    import importlib.util

    require(importlib.util.find_spec("ray") is not None, "ray is not installed")
    ports = [free_port(), free_port()]
    pods = [fleet_pod(f"127.0.0.1:{p}", NS, FLEET, pod=f"{FLEET}-head-{i}")
            for i, p in enumerate(ports)]  # fmt: skip
    with running_prometheus(pods, tmp_path / "prometheus") as server:
        yield server, ports


def test_spend_windows_and_feedback_survive_the_store_an_ingress_and_the_ray_head(
    prometheus: tuple[Prometheus, list[int]],
) -> None:
    import ray

    server, (metrics_1, metrics_2) = prometheus
    fleet = Fleet(server)
    http_1 = free_port()
    with ray_cluster(http_1, metrics_1, server.url):
        fleet.base = f"http://127.0.0.1:{http_1}"
        # team spends twice its budget: a cheap answer first (its counters' first samples),
        # then a dear one; then it is refused.
        assert fleet.post(TEAM).status_code == 200
        # (increase() needs two samples of a series: the first one must be scraped alone)
        series = f'sum(ray_shoal_tenant_cost_usd_total{{namespace="{NS}", tenant="team"}})'
        wait_until("team's first cost in Prometheus", lambda: server.value(series) > 0)
        assert fleet.post(TEAM, max_tokens=20).status_code == 200
        assert wait_until("team refused", fleet.refused_for_budget)
        # The replica refuses on its own books at once; the store hears of the dear answer at
        # the replica's next sync (every 0.2 s).
        spent_before = wait_until(
            "team's spend in the store", lambda: (u := stored())[2] > BUDGET and u
        )
        assert spent_before[0] >= 2, spent_before
        wait_until("team's spend over its budget in Prometheus",
                   lambda: read_baseline(server.url, NS, FLEET).get("team", (0, 0, 0))[2] > BUDGET)  # fmt: skip
        fleet.score_an_answer()
        wait_until("the score in Prometheus", fleet.all_feedback_counted)

        # 1. The usage store's actor is lost: re-created by the replica, seeded again.
        old = store()
        old_id = old._actor_id.hex()
        ray.kill(old, no_restart=True)

        def new_store() -> Any:
            try:
                actor = store()
            except ValueError:
                return None
            return actor if actor._actor_id.hex() != old_id else None

        actor = wait_until("a re-created usage store", new_store, 60)
        restored = wait_until("the new store seeded with team's spend",
                              lambda: (u := stored(actor))[2] > BUDGET and u, 30)  # fmt: skip
        assert restored[0] >= 1, restored  # the request window is not empty either
        assert wait_until("team refused", fleet.refused_for_budget)

        # 2. The ingress replica is lost: Ray Serve starts another; the store is alive.
        (replica,) = ingress_replicas()
        ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
        wait_until("a new ingress replica", lambda: ingress_replicas() not in ([], [replica]))
        wait_until("the fleet running again", running, 120)
        assert wait_until("team refused by the new replica", fleet.refused_for_budget)
        assert stored()[2] > BUDGET
        fleet.score_an_answer()
        wait_until("both scores in Prometheus", fleet.all_feedback_counted)

    # 3. The Ray head is lost with everything on it; a new Ray pod serves the fleet.
    wait_until("the old Ray pod's scrape failing",
               lambda: server.value(f'up{{pod="{FLEET}-head-0"}}') == 0)  # fmt: skip
    http_2 = free_port()
    with ray_cluster(http_2, metrics_2, server.url):
        fleet.base = f"http://127.0.0.1:{http_2}"
        wait_until("the new cluster's store seeded with team's spend",
                   lambda: (u := stored())[2] > BUDGET and u, 30)  # fmt: skip
        assert wait_until("team refused", fleet.refused_for_budget)
        fleet.score_an_answer()
        wait_until("all three scores in Prometheus", fleet.all_feedback_counted)
