"""Shared fixtures: a real Kubernetes control plane (etcd + kube-apiserver) with the CRDs.

The control plane is started once per test session on loopback with random ports. Tests
that need it skip visibly when the binaries are not built, or fail where servers are
required (``SHOAL_REQUIRE_SERVERS=1``, set by ``make test`` and CI).

Where servers are required, every skip is a failure, however it was written (``require``,
``pytest.importorskip``, a ``skipif`` marker, a module skipped at collection), except for
tests marked ``gpu``: a CPU machine cannot have what they need.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from typing import Any

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


def _required_skip_fails(report: Any, where: str, gpu: bool) -> None:
    """Turn a skip into a failure where servers and packages are required."""
    if not (servers_required() and report.skipped) or gpu or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"{where} was skipped ({reason}), but SHOAL_REQUIRE_SERVERS is set: every server and "
        "package it needs must be there (hack/setup.sh installs them)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    _required_skip_fails(
        outcome.get_result(), item.nodeid, item.get_closest_marker("gpu") is not None
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[Any]:
    outcome = yield
    gpu = "gpu" in collector.nodeid.lower()
    _required_skip_fails(outcome.get_result(), collector.nodeid, gpu)
