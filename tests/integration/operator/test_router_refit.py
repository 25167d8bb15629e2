"""End to end: the operator refits a policy's router from feedback counts a real Prometheus
holds, refuses a refit that would be worse on the calibration set, and says so when
Prometheus cannot be read.

Real: the API server and etcd, the operator (kopf's KopfRunner, in this process), Prometheus
(the Debian package, on loopback, scraping every second) and the serving layer's own metric
writer (:class:`~shoal.serving.metrics.RouterMetrics`, the one ``POST /v1/feedback`` counts
with), exported on a loopback port. The feedback endpoint itself, with the official client's
completion ids, is tested on a real Ray Serve fleet in
tests/integration/serving/test_router_refit_swap.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shoal.devtools.testing.prometheus import Prometheus, fleet_pod, free_port, running_prometheus
from shoal.routing import artifact_checksum, load_router
from shoal.serving.feedback import CompletionIds, logged_decision, logged_prefix
from shoal.serving.metrics import RouterMetrics
from tests.integration.operator.conftest import (
    Cluster,
    calibration_configmap,
    fleet,
    policy,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MATH, CODE = (
    "What is 12 times 9? Show the arithmetic.",
    "Write a Python function that sorts a list.",
)


@dataclass
class Feedback:
    """The fleet's feedback counters, as its ingress writes them, scraped by Prometheus."""

    url: str
    metrics: RouterMetrics
    server: Prometheus
    ids: CompletionIds = field(default_factory=lambda: CompletionIds(b"k" * 32))

    def send(self, model: str, cluster: int, score: float, n: int) -> None:
        for _ in range(n):
            self.metrics.feedback(model, cluster, score)

    def send_logged(
        self, model: str, cluster: int, score: float, n: int, propensity: float, held: bool
    ) -> None:
        """``n`` scores on answers whose ids log the routing decision at ``propensity``, in
        the held-out share or not (ids issued until the nonce puts them there), counted as
        the ingress counts them."""
        sent = 0
        while sent < n:
            cid = self.ids.issue(logged_prefix("chatcmpl-", propensity), model, cluster)
            logged = logged_decision(cid)
            assert logged is not None and logged[0] == propensity
            if logged[1] != held:
                continue
            self.metrics.feedback(model, cluster, score)
            self.metrics.logged_feedback(model, cluster, score, *logged)
            sent += 1

    def scraped(self) -> float:
        """Feedback events Prometheus holds right now."""
        return self.server.value('sum(shoal_feedback_total{fleet="f"})')


@pytest.fixture()
def prometheus(tmp_path: Path, namespace: str) -> Iterator[Feedback]:
    import prometheus_client as pc

    registry = pc.CollectorRegistry()
    metrics = RouterMetrics("f", backend="prometheus", registry=registry)
    target = free_port()
    exporter, _ = pc.start_http_server(target, addr="127.0.0.1", registry=registry)
    try:
        pod = fleet_pod(f"127.0.0.1:{target}", namespace, "f")
        with running_prometheus([pod], tmp_path / "prometheus") as server:
            yield Feedback(server.url, metrics, server)
    finally:
        exporter.shutdown()
        exporter.server_close()


def status(cluster: Cluster) -> dict[str, Any]:
    return dict((cluster.get("rpol", "p") or {}).get("status") or {})


def refit_condition(cluster: Cluster, reason: str) -> dict[str, Any] | None:
    c = cluster.condition("rpol", "p", "RouterRefit")
    return c if c and c["reason"] == reason else None


def stored_artifact(cluster: Cluster, name: str = "p-router-artifact") -> bytes:
    cm = cluster.get("configmap", name) or {}
    return base64.b64decode((cm.get("binaryData") or {}).get("router.bin", ""))


def fitted(cluster: Cluster) -> dict[str, Any]:
    """The policy's artifact status, once the artifact ConfigMap holds that artifact."""

    def settled() -> dict[str, Any] | None:
        art = status(cluster).get("artifact")
        blob = stored_artifact(cluster)
        return art if art and blob and artifact_checksum(blob) == art["checksum"] else None

    return wait_for("a fitted artifact in status and ConfigMap", settled, 180)


def clusters_of(blob: bytes) -> tuple[int, int]:
    """The math and the code prompts' clusters in the fitted router."""
    router = load_router(blob)
    math, code = router.rank(MATH).cluster, router.rank(CODE).cluster
    assert math is not None and code is not None and math != code
    return math, code


def feedback_policy(**feedback: Any) -> dict[str, Any]:
    return policy(feedback={"enabled": True, "refitIntervalSeconds": 30, **feedback})


@pytest.fixture()
def settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # The operator reads these when it starts; the autoscaler stays out of these tests.
    monkeypatch.setenv("SHOAL_AUTOSCALER_ENABLED", "false")
    return monkeypatch


def test_feedback_counts_refit_the_router_and_the_fleet_follows(
    cluster: Cluster, operator: Any, prometheus: Feedback, settings: pytest.MonkeyPatch
) -> None:
    settings.setenv("SHOAL_PROMETHEUS_URL", prometheus.url)
    # minEvents is exactly the routed feedback sent below: a scrape that caught part of it
    # refits nothing.
    cluster.apply(calibration_configmap(), feedback_policy(minEvents=50), fleet())
    with operator():
        first = fitted(cluster)
        assert status(cluster)["routerArtifactVersion"] == 1
        assert "lastRefitTime" not in status(cluster)
        no_feedback = wait_for(
            "RouterRefit=False NoFeedback with the fleet's count",
            lambda: (c := refit_condition(cluster, "NoFeedback")) and "fleets f;" in c["message"] and c,
            60,
        )  # fmt: skip
        assert no_feedback["status"] == "False"
        assert no_feedback["message"].startswith("0 feedback events")
        assert "spec.feedback.minEvents" in no_feedback["message"]

        # Clients agree with the calibration data on math, and find beta better than it
        # thought on code: the tables move, the router's choices stay as good.
        blob = stored_artifact(cluster)
        math, code = clusters_of(blob)
        prometheus.send("alpha", math, 1.0, 20)
        prometheus.send("beta", code, 1.0, 20)
        prometheus.send("alpha", code, 0.0, 10)
        prometheus.metrics.feedback("alpha", None, 1.0)  # a named-model answer: left out
        wait_for("Prometheus to hold the feedback", lambda: prometheus.scraped() >= 51, 30)

        refit = wait_for("RouterRefit=True", lambda: refit_condition(cluster, "Refit"), 90)
        assert refit["status"] == "True"
        assert refit["message"].startswith("version 2 from 50 feedback events")
        assert "1 events on answers of a named model" in refit["message"]
        now = status(cluster)
        assert now["routerArtifactVersion"] == 2 and now["feedbackEvents"] == 50
        assert now["lastRefitTime"] and now["artifact"]["version"] == 2
        assert now["artifact"]["checksum"] != first["checksum"]

        # The new version is in the policy's ConfigMap, and the fleet's follows.
        new = stored_artifact(cluster)
        assert artifact_checksum(new) == now["artifact"]["checksum"]
        from shoal.routing.artifact import decode_artifact

        header, arrays = decode_artifact(new)
        assert header["refit"]["version"] == 2 and header["refit"]["events"] == 50
        assert arrays["feedback_events"][code].tolist() == [10.0, 20.0]
        assert arrays["quality"][code][1] > arrays["prior_quality"][code][1]
        wait_for("the fleet's router ConfigMap to follow",
                 lambda: artifact_checksum(stored_artifact(cluster, "f-router")) == now["artifact"]["checksum"], 60)  # fmt: skip
        wait_for("the fleet to report it",
                 lambda: (cluster.get("fleet", "f") or {}).get("status", {}).get("routerArtifact") == now["artifact"]["checksum"], 60)  # fmt: skip

        # The fit's fingerprint is kept: the policy's own re-check serves version 2, no refit.
        generation = cluster.get("rpol", "p")["metadata"]["generation"]  # type: ignore[index]
        cluster.cp.kubectl("patch", "rpol", "p", "-n", cluster.ns, "--subresource=status",
                           "--type=merge", "-p", '{"status": {"observedGeneration": 0}}')  # fmt: skip
        wait_for("a policy re-check",
                 lambda: status(cluster).get("observedGeneration") == generation, 60)  # fmt: skip
        assert status(cluster)["routerArtifactVersion"] == 2
        assert artifact_checksum(stored_artifact(cluster)) == now["artifact"]["checksum"]


def test_a_refit_worse_on_the_calibration_set_is_refused(
    cluster: Cluster, operator: Any, prometheus: Feedback, settings: pytest.MonkeyPatch
) -> None:
    settings.setenv("SHOAL_PROMETHEUS_URL", prometheus.url)
    cluster.apply(calibration_configmap(), feedback_policy(minEvents=400), fleet())
    with operator():
        first = fitted(cluster)
        math, code = clusters_of(stored_artifact(cluster))
        # Scores that contradict the calibration data everywhere (a client scoring backwards).
        for model, cluster_id, score in [("alpha", math, 0.0), ("beta", math, 1.0),
                                         ("alpha", code, 1.0), ("beta", code, 0.0)]:  # fmt: skip
            prometheus.send(model, cluster_id, score, 100)
        refused = wait_for(
            "RouterRefit=False WorseOnCalibration",
            lambda: refit_condition(cluster, "WorseOnCalibration"),
            90,
        )
        assert refused["status"] == "False"
        assert "on the calibration set" in refused["message"]
        assert "points below the calibration fit's" in refused["message"]
        assert "the router keeps version 1" in refused["message"]
        now = status(cluster)
        assert now["routerArtifactVersion"] == 1 and now["feedbackEvents"] == 400
        assert now["artifact"]["checksum"] == first["checksum"]
        assert artifact_checksum(stored_artifact(cluster)) == first["checksum"]
        warnings = wait_for("a Warning event", lambda: [
            e for e in json.loads(cluster.cp.kubectl("get", "events", "-n", cluster.ns, "-o",
                                                     "json").stdout)["items"]
            if e["reason"] == "WorseOnCalibration" and e["type"] == "Warning"], 30)  # fmt: skip
        assert warnings[0]["involvedObject"]["name"] == "p"


def test_the_held_out_off_policy_estimate_decides_whether_a_refit_is_adopted(
    cluster: Cluster, operator: Any, prometheus: Feedback, settings: pytest.MonkeyPatch
) -> None:
    """Every answer logs its routing decision. The fit share says beta beats alpha on math
    (the feedback counts would adopt the refit that moves math to beta); the held-out share
    (alpha logged at 0.9, beta explored at 0.1) first says beta is worse there: the refit
    stays in shadow. More held-out feedback then shows beta better: it is adopted."""
    settings.setenv("SHOAL_PROMETHEUS_URL", prometheus.url)
    feedback = {"minEvents": 200, "maxCalibrationRegressionPercent": "100", "pessimism": "0"}
    cluster.apply(calibration_configmap(), feedback_policy(**feedback), fleet())
    with operator():
        first = fitted(cluster)
        math, _ = clusters_of(stored_artifact(cluster))
        # Held-out events first, then the fit share: a scrape that catches part of it sees
        # fewer than minEvents fit events and refits nothing.
        prometheus.send_logged("alpha", math, 1.0, 25, 0.9, held=True)
        prometheus.send_logged("alpha", math, 0.0, 2, 0.9, held=True)
        prometheus.send_logged("beta", math, 0.0, 3, 0.1, held=True)
        prometheus.send_logged("alpha", math, 0.1, 100, 0.9, held=False)
        prometheus.send_logged("beta", math, 0.9, 100, 0.1, held=False)
        shadow = wait_for(
            "RouterRefit=False Shadow", lambda: refit_condition(cluster, "Shadow"), 90
        )
        assert "by the off-policy estimate on 30 held-out logged events" in shadow["message"]
        assert "the router keeps version 1" in shadow["message"]
        now = status(cluster)
        assert now["routerArtifactVersion"] == 1 and now["feedbackEvents"] == 200
        assert now["shadowRefit"]["guard"] == "HeldOut"
        assert float(now["shadowRefit"]["lowerBoundPercent"]) < 0
        assert artifact_checksum(stored_artifact(cluster)) == first["checksum"]

        prometheus.send_logged("alpha", math, 1.0, 40, 0.9, held=True)
        prometheus.send_logged("alpha", math, 0.0, 176, 0.9, held=True)
        prometheus.send_logged("beta", math, 1.0, 24, 0.1, held=True)
        refit = wait_for(
            "RouterRefit=True on the held-out estimate",
            lambda: refit_condition(cluster, "Refit"),
            120,
        )  # fmt: skip
        assert refit["message"].startswith("version 2 from 200 feedback events")
        assert "by the off-policy estimate on " in refit["message"]
        assert "held-out logged events" in refit["message"]
        now = status(cluster)
        assert now["routerArtifactVersion"] == 2 and "shadowRefit" not in now
        assert artifact_checksum(stored_artifact(cluster)) == now["artifact"]["checksum"]


def test_prometheus_down_is_a_condition_and_nothing_else(
    cluster: Cluster, operator: Any, settings: pytest.MonkeyPatch
) -> None:
    settings.setenv("SHOAL_PROMETHEUS_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    cluster.apply(calibration_configmap(), feedback_policy(), fleet())
    with operator():
        first = fitted(cluster)
        down = wait_for("RouterRefit=False MetricsUnavailable",
                        lambda: refit_condition(cluster, "MetricsUnavailable"), 60)  # fmt: skip
        assert down["status"] == "False"
        assert "cannot read the feedback counts" in down["message"]
        assert "unreachable" in down["message"]
        # The policy and its fleet are unaffected: the artifact stays, the fleet serves it.
        ready = cluster.condition("rpol", "p", "Ready")
        assert ready is not None and ready["status"] == "True"
        wait_for("the fleet to serve the fitted artifact",
                 lambda: (cluster.get("fleet", "f") or {}).get("status", {}).get("routerArtifact") == first["checksum"], 60)  # fmt: skip
        # The fleet's completion-id key Secret exists, and its key is nowhere in the fleet's
        # RayService (referenced only).
        secret = wait_for(
            "the feedback key Secret", lambda: cluster.get("secret", "f-feedback-key")
        )
        key = base64.b64decode(secret["data"]["key"]).decode()
        assert len(key) == 64
        rs = json.dumps(cluster.get("rayservice", "f"))
        assert key not in rs and "f-feedback-key" in rs
        assert key not in json.dumps(cluster.get("rpol", "p")) + json.dumps(
            cluster.get("fleet", "f")
        )


def test_observe_mode_reports_the_refit_and_applies_nothing(
    cluster: Cluster, operator: Any, prometheus: Feedback, settings: pytest.MonkeyPatch
) -> None:
    settings.setenv("SHOAL_PROMETHEUS_URL", prometheus.url)
    cluster.apply(calibration_configmap(), feedback_policy(minEvents=50, mode="Observe"), fleet())
    with operator():
        first = fitted(cluster)
        math, code = clusters_of(stored_artifact(cluster))
        prometheus.send("alpha", math, 1.0, 20)
        prometheus.send("beta", code, 1.0, 20)
        prometheus.send("alpha", code, 0.0, 10)
        wait_for("Prometheus to hold the feedback", lambda: prometheus.scraped() >= 50, 30)
        observing = wait_for(
            "RouterRefit=False Observing", lambda: refit_condition(cluster, "Observing"), 90
        )
        assert observing["status"] == "False"
        assert "would be version 2" in observing["message"]
        now = status(cluster)
        assert now["shadowRefit"]["reason"] == "Observing" and now["shadowRefit"]["events"] == 50
        assert now["routerArtifactVersion"] == 1 and "lastRefitTime" not in now
        assert artifact_checksum(stored_artifact(cluster)) == first["checksum"]
        normal = wait_for("a Normal Observing event", lambda: [
            e for e in json.loads(cluster.cp.kubectl("get", "events", "-n", cluster.ns, "-o",
                                                     "json").stdout)["items"]
            if e["reason"] == "Observing" and e["type"] == "Normal"], 30)  # fmt: skip
        assert normal[0]["involvedObject"]["name"] == "p"
