"""Fixtures for tests in which KubeRay's own controller acts on what Shoal renders.

A control plane of their own (module scope), with the users the stack authenticates as,
and on it: KubeRay's operator, kube-controller-manager (garbage collector, Endpoints and
EndpointSlices), kube-scheduler and KWOK (the kubelets' part: Ready nodes, Running pods).
Shoal's operator runs in this process through kopf's KopfRunner, as in the operator tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.devtools.testing import require
from shoal.devtools.testing.controlplane import ControlPlane, missing_binaries, start_control_plane
from shoal.devtools.testing.kuberay import (
    FakeNode,
    KubeRayStack,
    missing_stack_binaries,
    stack_users,
    start_kuberay_stack,
)
from tests.integration.operator.conftest import Cluster, running_operator

#: One CPU node and one node with eight GPUs (L4s, as far as the labels go).
NODES = (
    FakeNode("cpu-0"),
    FakeNode("gpu-0", gpus=8, labels={"nvidia.com/gpu.product": "NVIDIA-L4"}),
)


@pytest.fixture(scope="module")
def kuberay_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with every CRD, and users for the stack's components."""
    missing = missing_binaries() + missing_stack_binaries()
    require(not missing, f"KubeRay stack not built ({', '.join(missing)}): run hack/setup.sh")
    cp = start_control_plane(tmp_path_factory.mktemp("kuberay-control-plane"), users=stack_users())
    try:
        cp.install_crds()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def kuberay(
    kuberay_control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeRayStack]:
    """KubeRay's operator and the controllers and fake kubelets it needs, running."""
    stack = start_kuberay_stack(
        kuberay_control_plane, tmp_path_factory.mktemp("kuberay-stack"), NODES
    )
    try:
        yield stack
    finally:
        stack.stop()


class RayCluster(Cluster):
    """kubectl-level access to one namespace, plus what KubeRay made there."""

    def __init__(self, stack: KubeRayStack, namespace: str) -> None:
        super().__init__(stack.cp, namespace)
        self.stack = stack

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", self.ns, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.cp.kubectl(*args).stdout)["items"])

    def rayclusters(self) -> list[dict[str, Any]]:
        """RayClusters of the namespace that are not being deleted."""
        return [c for c in self.items("raycluster") if not c["metadata"].get("deletionTimestamp")]

    def pods_of(self, raycluster: str) -> list[dict[str, Any]]:
        return self.items("pods", f"ray.io/cluster={raycluster}")


@pytest.fixture()
def ray_namespace(kuberay: KubeRayStack) -> str:
    """A fresh namespace on the KubeRay control plane."""
    import uuid

    name = f"k-{uuid.uuid4().hex[:10]}"
    kuberay.cp.kubectl("create", "namespace", name)
    return name


@pytest.fixture()
def cluster(kuberay: KubeRayStack, ray_namespace: str) -> RayCluster:
    return RayCluster(kuberay, ray_namespace)


@pytest.fixture()
def operator(
    kuberay: KubeRayStack, ray_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], Any]]:
    """Start Shoal's operator against the KubeRay control plane (a context manager factory)."""
    monkeypatch.setenv("KUBECONFIG", str(kuberay.cp.kubeconfig))
    yield lambda: running_operator(kuberay.cp, ray_namespace)
