"""Router fits follow the policy and its data: once per change, never on a mere restart, and a
bad data change leaves the previous artifact in service."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.operator.conftest import (
    CALIBRATION,
    Cluster,
    calibration_configmap,
    fleet,
    policy,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def artifact(cluster: Cluster) -> dict[str, Any]:
    return dict(((cluster.get("rpol", "p") or {}).get("status") or {}).get("artifact") or {})


def test_fit_once_refit_on_data_change_keep_on_bad_data(cluster: Cluster, operator: Any) -> None:
    cluster.apply(calibration_configmap(), policy(), fleet())
    with operator():
        first = wait_for("a fitted artifact", lambda: artifact(cluster).get("checksum"), 180)
        assert artifact(cluster)["samples"] == 16
        assert artifact(cluster)["models"] == ["alpha", "beta"]
        cm = wait_for(
            "the artifact ConfigMap", lambda: cluster.get("configmap", "p-router-artifact")
        )
        version = cm["metadata"]["resourceVersion"]
        wait_for("the fleet to serve it",
                 lambda: (cluster.get("fleet", "f") or {}).get("status", {}).get("routerArtifact") == first)  # fmt: skip

    with operator():  # a restart does not refit
        wait_for("the policy to be re-checked", lambda: cluster.condition("rpol", "p", "Ready"))
        # Proof that a reconcile ran after the restart: it rewrites a status field we spoil.
        generation = cluster.get("rpol", "p")["metadata"]["generation"]  # type: ignore[index]
        cluster.cp.kubectl("patch", "rpol", "p", "-n", cluster.ns, "--subresource=status",
                           "--type=merge", "-p", '{"status": {"observedGeneration": 0}}')  # fmt: skip
        wait_for("a reconcile after the restart",
                 lambda: cluster.get("rpol", "p")["status"]["observedGeneration"] == generation, 60)  # type: ignore[index]  # fmt: skip
        cm = cluster.get("configmap", "p-router-artifact")
        assert cm is not None and cm["metadata"]["resourceVersion"] == version

        # New calibration data: a new fit, and the fleet follows.
        more = CALIBRATION + "\n" + json.dumps(
            {"prompt": "Integrate x squared from 0 to 3.", "task": "math",
             "scores": {"alpha": 1.0, "beta": 0.0}}
        )  # fmt: skip
        cm_obj = calibration_configmap()
        cm_obj["data"]["calibration.jsonl"] = more
        cluster.apply(cm_obj)
        second = wait_for("a refit on new data",
                          lambda: (c := artifact(cluster).get("checksum")) != first and c, 120)  # fmt: skip
        assert artifact(cluster)["samples"] == 17
        wait_for("the fleet's router ConfigMap to follow",
                 lambda: (cluster.get("configmap", "f-router") or {}).get("metadata", {})
                 .get("annotations", {}).get("shoal.dev/router-artifact") == second, 60)  # fmt: skip

        # Bad data: Fitted=False naming the row; the previous artifact stays in service.
        cm_obj["data"]["calibration.jsonl"] = more + '\n{"prompt": "x", "scores": {"alpha": "NaN"}}'
        cluster.apply(cm_obj)
        fitted = wait_for("Fitted=False",
                          lambda: (c := cluster.condition("rpol", "p", "Fitted")) and c["status"] == "False" and c, 60)  # fmt: skip
        assert fitted["reason"] == "CalibrationInvalid"
        assert fitted["message"].startswith("calibration.jsonl, row 18: ")
        assert artifact(cluster)["checksum"] == second
        ready = cluster.condition("rpol", "p", "Ready")
        assert ready is not None and ready["status"] == "True"
