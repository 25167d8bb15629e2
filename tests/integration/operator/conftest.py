"""Fixtures for operator tests: the operator itself, run by kopf's KopfRunner in this process
against the real control plane, plus helpers to wait for what it does."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from shoal.devtools.testing.controlplane import ControlPlane, KubectlError

T = TypeVar("T")

# Short periodic re-checks so tests see level-based recovery quickly (read at handler import).
os.environ.setdefault("SHOAL_RESYNC_SECONDS", "3")
os.environ.setdefault("SHOAL_RETRY_SECONDS", "2")

#: Calibration data of our own (JSONL): three kinds of prompt, one model best at each.
CALIBRATION = "\n".join(
    json.dumps({"prompt": p, "task": task, "scores": scores})
    for task, prompts, scores in [
        ("math", [f"What is {a} times {b}? Show the arithmetic." for a, b in
                  [(3, 4), (12, 9), (7, 8), (25, 4), (13, 17), (6, 6), (99, 2), (45, 3)]],
         {"alpha": 1.0, "beta": 0.2}),
        ("code", [f"Write a Python function that {t}." for t in
                  ["reverses a string", "sorts a list of dicts by key", "parses a CSV line",
                   "checks for a palindrome", "merges two sorted lists", "counts words in a file",
                   "computes a factorial recursively", "flattens a nested list"]],
         {"alpha": 0.1, "beta": 0.9}),
    ]
    for p in prompts
)  # fmt: skip


def calibration_configmap(name: str = "cal") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"calibration.jsonl": CALIBRATION}}  # fmt: skip


def policy(name: str = "p", **spec: Any) -> dict[str, Any]:
    spec.setdefault("calibration", {"configMapRef": {"name": "cal", "key": "calibration.jsonl"}})
    spec.setdefault("clusters", 2)
    spec.setdefault("topP", 1)
    spec = {k: v for k, v in spec.items() if v is not None}
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "RoutingPolicy",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def fleet(name: str = "f", policy_name: str = "p", **spec: Any) -> dict[str, Any]:
    spec.setdefault("routingPolicyRef", {"name": policy_name})
    spec.setdefault("tiers", [{"name": "small", "costPerReplicaHour": "0.50"}])
    spec.setdefault("models", [
        {"name": "alpha", "engine": "simulated", "tier": "small", "engineArgs": {"ttft_ms": 20}},
        {"name": "beta", "engine": "simulated", "tier": "small"},
    ])  # fmt: skip
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelFleet",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60, every: float = 0.3) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # the object may not exist yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Cluster:
    """kubectl-level access to one namespace of the control plane."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp, self.ns = cp, namespace

    def apply(self, *objs: dict[str, Any]) -> None:
        for obj in objs:
            self.cp.kubectl(
                "apply", "--server-side", "-n", self.ns, "-f", "-", input=json.dumps(obj)
            )

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.cp.kubectl("get", kind, name, "-n", self.ns, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def names(self, kind: str) -> list[str]:
        out = self.cp.kubectl("get", kind, "-n", self.ns, "-o", "json").stdout
        return sorted(i["metadata"]["name"] for i in json.loads(out)["items"])

    def delete(self, kind: str, name: str, wait: bool = True) -> None:
        try:
            self.cp.kubectl("delete", kind, name, "-n", self.ns, f"--wait={str(wait).lower()}",
                            "--timeout=60s")  # fmt: skip
        except KubectlError as err:  # say what the object looks like now
            left = (self.get(kind, name) or {}).get("metadata")
            raise AssertionError(f"{err}\n{kind}/{name} now: {left}") from err

    def condition(self, kind: str, name: str, type: str) -> dict[str, Any] | None:
        obj = self.get(kind, name) or {}
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["type"] == type:
                return dict(c)
        return None

    def play_kuberay(self, name: str, *, ready: bool = True) -> None:
        """A stand-in for KubeRay: write the RayService status the way KubeRay does once Serve
        runs (this control plane runs no KubeRay controller, and KubeRay's own controller
        cannot reach a running Serve application in the tests: tests/integration/kuberay has it
        write the status up to that point)."""
        rs = self.get("rayservice", name)
        assert rs is not None
        app = yaml_app(rs)
        deployments = {d["name"]: {"status": "HEALTHY" if ready else "UPDATING"}
                       for d in app["deployments"]}  # fmt: skip
        status = {
            "observedGeneration": rs["metadata"]["generation"],
            "serviceStatus": "Running" if ready else "",
            "numServeEndpoints": 1 if ready else 0,
            "conditions": [{
                "type": "Ready", "status": "True" if ready else "False",
                "reason": "NonZeroServeEndpoints" if ready else "Initializing",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": rs["metadata"]["generation"],
            }],
            "activeServiceStatus": {
                "rayClusterName": f"{name}-raycluster-abcde",
                "applicationStatuses": {app["name"]: {
                    "status": "RUNNING" if ready else "DEPLOYING",
                    "serveDeploymentStatuses": deployments,
                }},
            },
        }  # fmt: skip
        self.cp.kubectl("patch", "rayservice", name, "-n", self.ns, "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": status}))  # fmt: skip


def yaml_app(rs: dict[str, Any]) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0])


@pytest.fixture()
def cluster(control_plane: ControlPlane, namespace: str) -> Cluster:
    return Cluster(control_plane, namespace)


@contextmanager
def running_operator(cp: ControlPlane, namespace: str) -> Iterator[Any]:
    """The operator, watching ``namespace``, in a thread of this process."""
    from kopf.testing import KopfRunner

    args = ["run", "--standalone", "--namespace", namespace, "-m", "shoal.operator.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner


@pytest.fixture()
def operator(
    control_plane: ControlPlane, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], Any]]:
    """Start the operator (a context manager factory, so tests can stop and restart it)."""
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    yield lambda: running_operator(control_plane, namespace)
