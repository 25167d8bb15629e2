"""Shared fixtures: a real Kubernetes control plane (etcd + kube-apiserver) with the CRDs.

The control plane is started once per test session on loopback with random ports. Tests
that need it skip visibly when the binaries are not built, or fail where servers are
required (``SHOAL_REQUIRE_SERVERS=1``, set by ``make test`` and CI).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shoal.devtools.testing import require, servers_required
from shoal.devtools.testing.controlplane import ControlPlane, missing_binaries, start_control_plane

#: A user with no permissions of its own; tests grant it Roles to see refused writes.
RESTRICTED_USER = "restricted"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with Shoal's and KubeRay's CRDs installed."""
    missing = missing_binaries()
    require(not missing, f"control plane not built ({', '.join(missing)}): run hack/setup.sh")
    cp = start_control_plane(
        tmp_path_factory.mktemp("control-plane"), users={RESTRICTED_USER: ["shoal-tests"]}
    )
    try:
        cp.install_crds()
        yield cp
    finally:
        cp.stop()


@pytest.fixture()
def namespace(control_plane: ControlPlane) -> str:
    """A fresh namespace for one test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A required run that collected nothing is an error, whatever selected nothing."""
    if servers_required() and session.testscollected == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nERROR: no tests were collected; a CI run must run tests.")
