"""The end-to-end tier: Shoal on the local real node (``make cluster-up``).

One cluster for the whole tier (a package-scoped fixture, stopped when the tier ends): a cluster a person started is reused (and left running),
otherwise the session starts one with ``hack/cluster-up.sh`` and removes it at the end with
``hack/cluster-down.sh`` (``SHOAL_E2E_KEEP=1`` keeps it). Where servers are required
(``SHOAL_REQUIRE_SERVERS=1``, as ``make test`` and CI set it) a missing piece of the node
fails the tier; elsewhere it skips.

A failed test's report carries the pods, the fleet's events, and the operator's, KubeRay's
and the Ray pods' logs (section "node diagnostics").
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.devtools.testing.node import NodeCluster, attach_or_start, tear_down

E2E_DIR = Path(__file__).parent
#: The namespace the tier's fleets live in.
FLEET_NAMESPACE = "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)
            # The first test also waits for the cluster to come up (image builds when cold).
            item.add_marker(pytest.mark.timeout(3600))


_cluster: NodeCluster | None = None
_tier_started = time.monotonic()


@pytest.fixture(scope="package")  # stopped once the tier is done, not at the session's end
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """The node with KubeRay and Shoal installed, and the tier's namespace."""
    global _cluster
    log = tmp_path_factory.mktemp("node") / "cluster-up.log"
    node = attach_or_start(log)
    _cluster = node
    if node.up_seconds is not None:
        print(f"\n[e2e] cluster-up took {node.up_seconds:.0f} s (log: {log})")
    node.kubectl("create", "namespace", FLEET_NAMESPACE, check=False)
    try:
        yield node
    finally:
        _cluster = None
        print(f"\n[e2e] the tier took {time.monotonic() - _tier_started:.0f} s")
        node.kubectl("delete", "namespace", FLEET_NAMESPACE, "--wait=false", check=False)
        if node.started_here and os.environ.get("SHOAL_E2E_KEEP", "") in ("", "0"):
            tear_down(log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _cluster is not None and E2E_DIR in Path(str(item.fspath)).parents:
        try:
            report.sections.append(("node diagnostics", _cluster.diagnostics(FLEET_NAMESPACE)))
        except Exception as exc:  # the report is still worth having without them
            report.sections.append(("node diagnostics", f"could not gather them: {exc}"))
