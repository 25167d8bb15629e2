"""One refit attempt's decisions, with the Kubernetes API and Prometheus faked in memory:
accepted, skipped when the counts did not change, held for the refit interval, refused on a
mismatch or when the counts cannot be read. The same path runs against the real API server
and a real Prometheus in tests/integration/operator/test_router_refit.py."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.devtools.testing.embeddings import serve_embeddings
from shoal.operator.policies import artifact_status
from shoal.operator.refit import (
    FeedbackRow,
    FeedbackUnavailable,
    LoggedRow,
    RefitState,
    refit_policy,
)
from shoal.planning.artifacts import artifact_configmap

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def calibration() -> str:
    lines = []
    for i in range(8):
        lines.append({"prompt": f"What is {i} times {i + 3}? Show the arithmetic.",
                      "task": "math", "scores": {"alpha": 1.0, "beta": 0.2}})  # fmt: skip
        lines.append({"prompt": f"Write a Python function number {i} that sorts a list.",
                      "task": "code", "scores": {"alpha": 0.1, "beta": 0.9}})  # fmt: skip
    return "\n".join(json.dumps(x) for x in lines)


class FakeGateway:
    """The gateway's get / apply / patch_status over a dict (a fake, for the unit tests)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.status_writes = 0
        self.applies = 0

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applies += 1
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return obj

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.status_writes += 1
        obj = self.objects[(kind, namespace, name)]
        merged = {**(obj.get("status") or {}), **status}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}
        return obj


class FakeSource:
    """Feedback rows set by the test (a fake Prometheus)."""

    def __init__(self) -> None:
        self.rows: list[FeedbackRow] = []
        self.logged_rows: list[LoggedRow] = []
        self.error: str | None = None

    def counts(self, namespace: str, fleets: Sequence[str]) -> list[FeedbackRow]:
        if self.error:
            raise FeedbackUnavailable(self.error)
        return list(self.rows)

    def logged(self, namespace: str, fleets: Sequence[str]) -> list[LoggedRow]:
        return list(self.logged_rows)


@pytest.fixture()
def world() -> Iterator[tuple[FakeGateway, FakeSource, RefitState, tuple[int, int]]]:
    from shoal.api.v1alpha1 import RoutingPolicy
    from shoal.operator.policies import fit
    from shoal.routing import load_router
    from shoal.routing.embedders import embedder_for_policy

    with serve_embeddings(dim=64) as endpoint:
        gw = FakeGateway()
        gw.objects[("ConfigMap", "ns", "cal")] = {
            "metadata": {"name": "cal", "namespace": "ns"},
            "data": {"cal.jsonl": calibration()},
        }
        body = {
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {
                "clusters": 2,
                "topP": 1,
                "alpha": "1",
                "embedder": {"type": "openai", "endpoint": endpoint.url, "model": "hash"},
                "calibration": {"configMapRef": {"name": "cal", "key": "cal.jsonl"}},
                "feedback": {"enabled": True, "minEvents": 10, "refitIntervalSeconds": 60},
            },
        }
        policy = RoutingPolicy.model_validate(body)
        blob = fit(policy, calibration().encode(), "cal.jsonl", NOW)
        art = artifact_status("p-router-artifact", blob)
        gw.apply(artifact_configmap(policy, blob, "fp", art.checksum))
        # As the policy's reconcile leaves it: fitted and verified for its generation.
        fitted = {
            "type": "Fitted",
            "status": "True",
            "reason": "Fitted",
            "message": "",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        body["status"] = {"artifact": art.model_dump(mode="json", by_alias=True),
                          "routerArtifactVersion": 1, "conditions": [fitted]}  # fmt: skip
        gw.objects[("RoutingPolicy", "ns", "p")] = body
        gw.applies = 0
        embedder = embedder_for_policy("openai", endpoint=endpoint.url, model="hash")
        router = load_router(blob, embedder=embedder)
        math = router.rank("What is 5 times 9? Show the arithmetic.").cluster
        code = router.rank("Write a Python function number 3 that sorts a list.").cluster
        assert math is not None and code is not None and math != code
        source = FakeSource()
        yield gw, source, RefitState(source), (math, code)


def attempt(gw: FakeGateway, state: RefitState, clock: float) -> Any:
    body = gw.get("shoal.dev/v1alpha1", "RoutingPolicy", "ns", "p")
    return refit_policy(gw, state, body, ["f"], NOW, clock=clock)  # type: ignore[arg-type]


def condition(gw: FakeGateway) -> dict[str, Any]:
    status = gw.objects[("RoutingPolicy", "ns", "p")]["status"]
    return next(c for c in status["conditions"] if c["type"] == "RouterRefit")


def test_accepted_then_unchanged_then_held_for_the_interval(world: Any) -> None:
    gw, source, state, (math, code) = world
    source.rows = [FeedbackRow("alpha", str(math), 12, 12), FeedbackRow("beta", str(code), 6, 5)]
    out = attempt(gw, state, clock=0.0)
    assert (out.reason, out.version, gw.applies) == ("Refit", 2, 1)
    status = gw.objects[("RoutingPolicy", "ns", "p")]["status"]
    assert status["routerArtifactVersion"] == 2 and status["feedbackEvents"] == 18
    assert status["lastRefitTime"] == "2026-12-02T06:00:00Z"
    assert condition(gw)["status"] == "True"
    cm = gw.objects[("ConfigMap", "ns", "p-router-artifact")]
    assert cm["metadata"]["annotations"]["shoal.dev/fit-fingerprint"] == "fp"  # kept
    from shoal.routing import artifact_checksum

    stored = base64.b64decode(cm["binaryData"]["router.bin"])
    assert artifact_checksum(stored) == status["artifact"]["checksum"]

    writes = gw.status_writes
    assert not attempt(gw, state, clock=30.0).attempted  # within refitIntervalSeconds
    out = attempt(gw, state, clock=61.0)  # the same counts: no new version, no write
    assert (out.reason, gw.applies, gw.status_writes) == ("Unchanged", 1, writes)

    source.rows.append(FeedbackRow("alpha", str(code), 4, 0))
    assert not attempt(gw, state, clock=100.0).attempted  # "Unchanged" waits an interval too
    out = attempt(gw, state, clock=130.0)
    assert (out.reason, out.version) == ("Refit", 3)
    assert gw.objects[("RoutingPolicy", "ns", "p")]["status"]["feedbackEvents"] == 22

    # Prometheus goes away and comes back with the same counts: all is well again.
    source.error = "Prometheus at http://prom:9090 is unreachable: connection refused"
    assert attempt(gw, state, clock=200.0).reason == "MetricsUnavailable"
    assert condition(gw)["status"] == "False"
    source.error = None
    assert attempt(gw, state, clock=201.0).reason == "Unchanged"
    assert condition(gw)["status"] == "True"
    assert condition(gw)["message"] == "version 3 in use; no new feedback since version 3"


def test_refusals_leave_the_artifact_and_are_retried_soon(world: Any) -> None:
    gw, source, state, (math, code) = world
    before = gw.objects[("RoutingPolicy", "ns", "p")]["status"]["artifact"]["checksum"]

    source.error = "Prometheus at http://prom:9090 is unreachable: connection refused"
    assert attempt(gw, state, clock=0.0).reason == "MetricsUnavailable"
    assert "the router keeps version 1" in condition(gw)["message"]

    source.error = None  # back, but with counts of another fit's clusters
    source.rows = [FeedbackRow("alpha", "5", 50, 50)]
    assert attempt(gw, state, clock=1.0).reason == "FeedbackMismatch"  # retried at once
    assert "names clusters 5, the router has 2" in condition(gw)["message"]

    source.rows = [FeedbackRow("alpha", str(math), 3, 3), FeedbackRow("alpha", "", 40, 40)]
    out = attempt(gw, state, clock=2.0)
    assert out.reason == "NoFeedback"
    assert condition(gw)["message"].startswith("3 feedback events on the router's clusters")
    assert "40 events on answers of a named model" in condition(gw)["message"]

    # Scores against the calibration data everywhere: worse on it, refused.
    source.rows = [FeedbackRow("alpha", str(math), 200, 0), FeedbackRow("beta", str(math), 200, 200),
                   FeedbackRow("alpha", str(code), 200, 200), FeedbackRow("beta", str(code), 200, 0)]  # fmt: skip
    assert attempt(gw, state, clock=3.0).reason == "WorseOnCalibration"
    assert condition(gw)["status"] == "False"
    status = gw.objects[("RoutingPolicy", "ns", "p")]["status"]
    assert status["artifact"]["checksum"] == before and status["routerArtifactVersion"] == 1
    assert gw.applies == 0
    assert not attempt(gw, state, clock=4.0).attempted  # a refusal on the data waits


def test_nothing_without_feedback_enabled_or_an_artifact(world: Any) -> None:
    gw, _, state, _ = world
    body = gw.get("shoal.dev/v1alpha1", "RoutingPolicy", "ns", "p")
    off = copy.deepcopy(body)
    off["spec"]["feedback"]["enabled"] = False
    assert not refit_policy(gw, state, off, ["f"], NOW).attempted  # type: ignore[arg-type]
    unfitted = copy.deepcopy(body)
    unfitted["status"] = {}
    assert not refit_policy(gw, state, unfitted, ["f"], NOW).attempted  # type: ignore[arg-type]
    assert gw.status_writes == 0


def test_a_refit_the_feedback_does_not_show_better_stays_in_shadow(world: Any) -> None:
    """Feedback scores only alpha on math, poorly: the plain posterior would move math to
    beta, which nobody scored there. The calibration check is opened wide so that only the
    feedback guard decides: the refit is kept in shadow and reported, nothing is applied."""
    gw, source, state, (math, code) = world
    body = gw.objects[("RoutingPolicy", "ns", "p")]
    body["spec"]["feedback"].update(maxCalibrationRegressionPercent="100", pessimism="0")
    source.rows = [FeedbackRow("alpha", str(math), 200, 20), FeedbackRow("beta", str(code), 50, 45)]
    out = attempt(gw, state, clock=0.0)
    assert (out.reason, out.version, gw.applies) == ("Shadow", 1, 0)
    status = gw.objects[("RoutingPolicy", "ns", "p")]["status"]
    assert status["routerArtifactVersion"] == 1
    shadow = status["shadowRefit"]
    assert shadow["reason"] == "Shadow" and shadow["clustersChanged"] == 1
    assert float(shadow["lowerBoundPercent"]) < 0 and shadow["events"] == 250
    assert condition(gw)["status"] == "False"
    assert "kept in shadow" in condition(gw)["message"]
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "ns", "policy": "p", **labels})

    lower = sample("shoal_router_shadow_refit_change_percent", bound="lower")
    assert lower == float(shadow["lowerBoundPercent"])
    assert sample("shoal_router_shadow_refit_clusters_changed") == 1
    assert (sample("shoal_router_refit_attempts_total", reason="Shadow") or 0) >= 1
    assert not attempt(gw, state, clock=30.0).attempted  # a shadow verdict waits an interval
    # Beta is scored on math too, and is clearly better there: the refit is applied.
    source.rows.append(FeedbackRow("beta", str(math), 200, 180))
    out = attempt(gw, state, clock=61.0)
    assert (out.reason, out.version, gw.applies) == ("Refit", 2, 1)
    assert "shadowRefit" not in gw.objects[("RoutingPolicy", "ns", "p")]["status"]


def test_observe_mode_reports_what_a_refit_would_change_and_applies_nothing(world: Any) -> None:
    gw, source, state, (math, code) = world
    gw.objects[("RoutingPolicy", "ns", "p")]["spec"]["feedback"]["mode"] = "Observe"
    source.rows = [FeedbackRow("alpha", str(math), 12, 12), FeedbackRow("beta", str(code), 6, 5)]
    out = attempt(gw, state, clock=0.0)
    assert (out.reason, out.version, gw.applies) == ("Observing", 1, 0)
    status = gw.objects[("RoutingPolicy", "ns", "p")]["status"]
    assert status["routerArtifactVersion"] == 1 and status["feedbackEvents"] == 18
    assert status["shadowRefit"]["reason"] == "Observing"
    assert status["shadowRefit"]["clustersChanged"] == 0
    assert "would be version 2" in condition(gw)["message"]


def test_a_policy_not_verified_for_its_generation_is_not_refit(world: Any) -> None:
    """An edit the operator has not verified (a new embedder endpoint, say) is not called by
    the refit either."""
    gw, source, state, (math, code) = world
    gw.objects[("RoutingPolicy", "ns", "p")]["metadata"]["generation"] = 2
    source.rows = [FeedbackRow("alpha", str(math), 12, 12), FeedbackRow("beta", str(code), 6, 5)]
    out = attempt(gw, state, clock=0.0)
    assert not out.attempted and "verify generation 2" in out.message
    assert gw.applies == 0


def held_out_row(model: str, cluster: int, n: int, hits: int, p: float) -> LoggedRow:
    """``n`` held-out events with binary scores (``hits`` ones) logged at propensity ``p``."""
    return LoggedRow(model, str(cluster), "heldout", n, hits, hits / p, hits / p**2)


@pytest.mark.parametrize(
    ("beta_hits", "alpha_hits", "reason", "version"),
    [(1, 100, "Shadow", 1), (11, 20, "Refit", 2)],
)
def test_the_held_out_estimate_decides_whether_a_refit_is_adopted(
    world: Any, beta_hits: int, alpha_hits: int, reason: str, version: int
) -> None:
    """The fit share says beta beats alpha on math (the count guard would adopt the refit
    that moves math to beta). The held-out share (alpha logged at 0.9, beta explored at 0.1)
    decides: beta scoring 1 in 12 there keeps the refit in shadow; 11 in 12 adopts it."""
    gw, source, state, (math, code) = world
    body = gw.objects[("RoutingPolicy", "ns", "p")]
    body["spec"]["feedback"].update(maxCalibrationRegressionPercent="100", pessimism="0")
    held = [held_out_row("alpha", math, 108, alpha_hits, 0.9),
            held_out_row("beta", math, 12, beta_hits, 0.1)]  # fmt: skip
    # The plain counters hold every event, both shares.
    source.rows = [
        FeedbackRow("alpha", str(math), 200 + 108, 20 + alpha_hits),
        FeedbackRow("beta", str(math), 200 + 12, 180 + beta_hits),
        FeedbackRow("beta", str(code), 50, 45),
    ]
    source.logged_rows = [*held, LoggedRow("beta", str(code), "fit", 50, 45, 45, 45)]
    out = attempt(gw, state, clock=0.0)
    assert (out.reason, out.version) == (reason, version)
    status = gw.objects[("RoutingPolicy", "ns", "p")]["status"]
    assert status["feedbackEvents"] == 450  # learnt from the fit share only
    message = condition(gw)["message"]
    assert "by the off-policy estimate on 120 held-out logged events" in message
    assert " over 1 clusters with " in message  # math's choice changes either way
    if reason == "Shadow":
        shadow = status["shadowRefit"]
        assert shadow["guard"] == "HeldOut" and shadow["events"] == 120
        assert float(shadow["estimatedChangePercent"]) < 0
        assert float(shadow["lowerBoundPercent"]) < 0 and gw.applies == 0
    else:
        assert gw.applies == 1 and "shadowRefit" not in status


def test_logged_feedback_without_a_held_out_share_is_no_evidence(world: Any) -> None:
    """Decisions are logged but nothing is held out yet: a refit that changes a choice has no
    held-out estimate, so it stays in shadow (the counts are not asked instead)."""
    gw, source, state, (math, _) = world
    body = gw.objects[("RoutingPolicy", "ns", "p")]
    body["spec"]["feedback"].update(maxCalibrationRegressionPercent="100", pessimism="0")
    source.rows = [
        FeedbackRow("alpha", str(math), 200, 20),
        FeedbackRow("beta", str(math), 200, 180),
    ]
    source.logged_rows = [LoggedRow("beta", str(math), "fit", 200, 180, 180, 180)]
    out = attempt(gw, state, clock=0.0)
    assert out.reason == "Shadow"
    shadow = gw.objects[("RoutingPolicy", "ns", "p")]["status"]["shadowRefit"]
    assert shadow["guard"] == "HeldOut" and shadow["events"] == 0
