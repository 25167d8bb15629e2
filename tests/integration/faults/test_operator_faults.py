"""Faults under the operator, against the real API server and etcd: the operator SIGKILLed
in the middle of reconciling fleets and in the middle of a router fit, and etcd killed and
restarted under the API server while the operator works. Each time a restarted (or
surviving) operator converges: every fleet has exactly its children, once, and a status that
says Ready for its current generation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoal.devtools.testing.controlplane import ControlPlane
from tests.integration.faults.conftest import operator_process
from tests.integration.operator.conftest import (
    Cluster,
    calibration_configmap,
    fleet,
    policy,
    wait_for,
    yaml_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FLEETS = [f"f{i}" for i in range(6)]


def _static() -> dict[str, Any]:
    return policy("s", strategy="static", staticOrder=["alpha", "beta"], calibration=None)


def _ready_now(cluster: Cluster, name: str) -> bool:
    obj = cluster.get("fleet", name) or {}
    ready = cluster.condition("fleet", name, "Ready") or {}
    return ready.get("status") == "True" and (
        (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
    )


def _converged(cluster: Cluster, names: list[str]) -> None:
    """Every fleet served (this test plays KubeRay's part) and Ready; children exactly once."""
    for name in names:
        wait_for(f"the RayService of {name}", lambda n=name: cluster.get("rayservice", n), 180)
        cluster.play_kuberay(name)
    for name in names:
        wait_for(f"{name} to be Ready", lambda n=name: _ready_now(cluster, n), 120)
    assert cluster.names("rayservice") == sorted(names)
    assert cluster.names("service") == sorted(names)
    assert cluster.names("networkpolicy") == sorted(names)
    assert cluster.names("poddisruptionbudget") == sorted(f"{n}-workers" for n in names)
    for name in names:
        (owner,) = cluster.get("rayservice", name)["metadata"]["ownerReferences"]  # type: ignore[index]
        assert owner["uid"] == cluster.get("fleet", name)["metadata"]["uid"]  # type: ignore[index]


def test_sigkill_mid_reconcile_converges(cluster: Cluster, tmp_path: Path) -> None:
    cluster.apply(_static(), *[fleet(n, policy_name="s") for n in FLEETS])
    with operator_process(cluster.cp, cluster.ns, tmp_path / "op1.log") as op:
        # Killed as soon as the first child is written: the other fleets are mid-way.
        wait_for("a first RayService", lambda: cluster.names("rayservice"), 120, every=0.05)
        op.kill()
    half_done = cluster.names("rayservice")
    with operator_process(cluster.cp, cluster.ns, tmp_path / "op2.log") as op:
        try:
            _converged(cluster, FLEETS)
        except BaseException:
            print(op.output()[-4000:])
            raise
    print(f"RayServices written before the SIGKILL: {len(half_done)} of {len(FLEETS)}")


def test_sigkill_mid_fit_converges(cluster: Cluster, tmp_path: Path) -> None:
    cluster.apply(calibration_configmap(), policy(), fleet())
    with operator_process(cluster.cp, cluster.ns, tmp_path / "op1.log") as op:
        fitting = wait_for("the fit to start", lambda: cluster.condition("rpol", "p", "Fitted"),
                           120, every=0.05)  # fmt: skip
        op.kill()
    assert fitting["status"] != "True", fitting  # killed before the fit was done
    with operator_process(cluster.cp, cluster.ns, tmp_path / "op2.log") as op:
        try:
            wait_for("Fitted=True after the restart",
                     lambda: (cluster.condition("rpol", "p", "Fitted") or {}).get("status") == "True",
                     240)  # fmt: skip
            _converged(cluster, ["f"])
        except BaseException:
            print(op.output()[-4000:])
            raise
    assert cluster.names("configmap") == ["cal", "f-router", "p-router-artifact"]
    status = cluster.get("rpol", "p")["status"]  # type: ignore[index]
    artifact = status["artifact"]
    assert artifact["samples"] == 16 and artifact["models"] == ["alpha", "beta"]
    served = cluster.get("configmap", "f-router")["metadata"]["annotations"]  # type: ignore[index]
    assert served["shoal.dev/router-artifact"] == artifact["checksum"]


def test_etcd_restart_under_the_api_server_converges(
    cluster: Cluster, control_plane: ControlPlane, tmp_path: Path
) -> None:
    cluster.apply(_static(), *[fleet(n, policy_name="s") for n in FLEETS[:3]])
    with operator_process(cluster.cp, cluster.ns, tmp_path / "op.log") as op:
        try:
            _converged(cluster, FLEETS[:3])

            def outage_is_real() -> None:
                out = control_plane.kubectl("get", "fleets", "-n", cluster.ns,
                                            "--request-timeout=5s", check=False)  # fmt: skip
                assert out.returncode != 0, "etcd is down, yet the API server answered a read"

            control_plane.restart_etcd(while_down=outage_is_real)
            # Work after the restart: a changed fleet and a new one.
            changed = fleet("f0", policy_name="s")
            changed["spec"]["models"][1]["engineArgs"] = {"ttft_ms": 7}
            cluster.apply(changed, fleet("f3", policy_name="s"))

            def caught_up() -> bool:
                models = yaml_app(cluster.get("rayservice", "f0") or {})["args"]["fleet"]["models"]
                return bool(models[1].get("engineArgs") == {"ttft_ms": 7})

            wait_for("the operator to apply the change after etcd's restart", caught_up, 120)
            _converged(cluster, FLEETS[:4])
            assert op.proc.poll() is None, "the operator exited during etcd's outage"
        except BaseException:
            print(op.output()[-4000:])
            raise
    events = json.loads(cluster.cp.kubectl("get", "events", "-n", cluster.ns, "-o", "json").stdout)
    assert any(e["reason"] == "Ready" for e in events["items"])
