"""The operator against the real API server and the real RayService CRD.

The operator runs in this process through kopf's KopfRunner. The control plane has no KubeRay
controller and no kubelets, so where a test needs a RayService to be "running", it writes the
status KubeRay would write (``Cluster.play_kuberay``) and says so.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.operator.conftest import (
    Cluster,
    calibration_configmap,
    fleet,
    policy,
    wait_for,
    yaml_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _ready(cluster: Cluster, kind: str, name: str) -> bool:
    c = cluster.condition(kind, name, "Ready")
    return bool(c and c["status"] == "True")


def test_fleet_lifecycle(cluster: Cluster, operator: Any) -> None:
    with operator():
        cluster.apply(calibration_configmap(), policy(), fleet())
        wait_for("the policy's router to be fitted", lambda: _ready(cluster, "rpol", "p"), 180)
        rs = wait_for("the RayService", lambda: cluster.get("rayservice", "f"), 60)
        assert cluster.get("configmap", "f-router") is not None
        assert cluster.get("service", "f") is not None
        app = yaml_app(rs)
        assert [d["name"] for d in app["deployments"]] == ["router", "model-alpha", "model-beta"]

        # Progressing until KubeRay reports the Serve application running.
        progressing = wait_for(
            "Progressing", lambda: cluster.condition("fleet", "f", "Progressing")
        )
        assert progressing["status"] == "True"
        assert not _ready(cluster, "fleet", "f")
        cluster.play_kuberay("f")  # this test plays KubeRay's part
        wait_for("the fleet to be Ready", lambda: _ready(cluster, "fleet", "f"), 30)
        out = cluster.cp.kubectl("get", "fleets", "-n", cluster.ns).stdout
        assert out.splitlines()[1].split()[:4] == [
            "f",
            "True",
            "2/2",
            f"http://f.{cluster.ns}.svc:8000/v1",
        ]

        # Edit engine arguments: the RayService changes in place, nothing is recreated.
        uids = {k: cluster.get(k, n)["metadata"]["uid"]  # type: ignore[index]
                for k, n in [("rayservice", "f"), ("configmap", "f-router"), ("service", "f")]}  # fmt: skip
        changed = fleet()
        changed["spec"]["models"][0]["engineArgs"] = {"ttft_ms": 99}
        cluster.apply(changed)

        def new_args() -> bool:
            models = yaml_app(cluster.get("rayservice", "f") or {})["args"]["fleet"]["models"]
            return bool(models[0].get("engineArgs") == {"ttft_ms": 99})

        wait_for("the new engine args in serveConfigV2", new_args, 30)
        for (kind, name), uid in zip([("rayservice", "f"), ("configmap", "f-router"), ("service", "f")],
                                     uids.values(), strict=True):  # fmt: skip
            assert cluster.get(kind, name)["metadata"]["uid"] == uid, kind  # type: ignore[index]
        assert cluster.names("rayservice") == ["f"]

        # Remove a model: it disappears from the config.
        fewer = fleet()
        fewer["spec"]["models"] = fewer["spec"]["models"][:1]
        cluster.apply(fewer)
        wait_for("model-beta to leave the config",
                 lambda: [d["name"] for d in yaml_app(cluster.get("rayservice", "f") or {})["deployments"]]
                 == ["router", "model-alpha"], 30)  # fmt: skip

        # Delete the fleet: its children go with it (the operator's finalizer here; the
        # test API server runs no garbage collector for the ownerReferences).
        cluster.delete("fleet", "f")
        assert cluster.names("rayservice") == []
        assert cluster.get("service", "f") is None
        assert cluster.get("configmap", "f-router") is None


def test_missing_policy_degrades_then_recovers(cluster: Cluster, operator: Any) -> None:
    with operator():
        cluster.apply(fleet(policy_name="later"))
        degraded = wait_for("Degraded", lambda: cluster.condition("fleet", "f", "Degraded"), 30)
        assert degraded["status"] == "True"
        assert degraded["reason"] == "RoutingPolicyNotFound"
        assert "'later' does not exist" in degraded["message"]
        events = cluster.cp.kubectl("get", "events", "-n", cluster.ns, "-o", "json").stdout
        assert any(e["reason"] == "RoutingPolicyNotFound" for e in json.loads(events)["items"])

        cluster.apply(calibration_configmap(), policy("later"))
        wait_for(
            "the RayService once the policy exists", lambda: cluster.get("rayservice", "f"), 180
        )
        wait_for("Degraded to clear",
                 lambda: (cluster.condition("fleet", "f", "Degraded") or {}).get("status") == "False", 30)  # fmt: skip
        cluster.play_kuberay("f")  # this test plays KubeRay's part
        wait_for("the fleet to be Ready", lambda: _ready(cluster, "fleet", "f"), 30)


def test_static_policy_needs_no_fit(cluster: Cluster, operator: Any) -> None:
    with operator():
        cluster.apply(policy("s", strategy="static", staticOrder=["beta", "alpha"], calibration=None),
                      fleet(policy_name="s"))  # fmt: skip
        rs = wait_for("the RayService", lambda: cluster.get("rayservice", "f"), 60)
        assert yaml_app(rs)["args"]["policy"]["staticOrder"] == ["beta", "alpha"]
        assert cluster.get("configmap", "f-router") is None
        router = wait_for("RouterReady", lambda: cluster.condition("fleet", "f", "RouterReady"))
        assert (router["status"], router["reason"]) == ("True", "StaticOrder")


def test_restart_mid_reconcile_converges(cluster: Cluster, operator: Any) -> None:
    cluster.apply(calibration_configmap(), policy(), fleet())
    with operator():  # stopped as soon as the fit starts: the reconcile is cut short
        wait_for(
            "the fit to start", lambda: cluster.condition("rpol", "p", "Fitted"), 60, every=0.05
        )
    with operator():
        rs = wait_for("the RayService", lambda: cluster.get("rayservice", "f"), 180)
        cluster.play_kuberay("f")  # this test plays KubeRay's part
        wait_for("the fleet to be Ready", lambda: _ready(cluster, "fleet", "f"), 30)
    # Drift made while no operator runs: the operator does not watch Services (its RBAC
    # grants no read of them), so a deletion made after the next start's reconcile had
    # applied the Service would wait for the fleet's next change.
    cluster.delete("service", "f")
    with operator():  # a third start changes nothing but the drift we made
        # Proof that a full reconcile ran after this start: it puts back a deleted child.
        wait_for("the Service to be put back", lambda: cluster.get("service", "f"), 60)
        assert cluster.names("rayservice") == ["f"]
        assert cluster.names("configmap") == ["cal", "f-router", "p-router-artifact"]
        again = cluster.get("rayservice", "f")
        assert again is not None and again["metadata"]["uid"] == rs["metadata"]["uid"]
        assert again["metadata"]["generation"] == rs["metadata"]["generation"]


def test_survives_api_outage(cluster: Cluster, operator: Any) -> None:
    with operator():
        cluster.apply(policy("s", strategy="static", staticOrder=["alpha"], calibration=None),
                      fleet(policy_name="s"))  # fmt: skip
        wait_for("the RayService", lambda: cluster.get("rayservice", "f"), 60)
        cluster.cp.stop_apiserver()
        time.sleep(10)
        cluster.cp.start_apiserver()
        changed = fleet(policy_name="s")
        changed["spec"]["models"][1]["engineArgs"] = {"ttft_ms": 7}
        cluster.apply(changed)

        def caught_up() -> bool:
            models = yaml_app(cluster.get("rayservice", "f") or {})["args"]["fleet"]["models"]
            return bool(models[1].get("engineArgs") == {"ttft_ms": 7})

        wait_for("the operator to catch up after the outage", caught_up, 90)
