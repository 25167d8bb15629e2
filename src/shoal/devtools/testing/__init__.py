"""Support for running Shoal against real servers in tests and benchmarks.

- :mod:`shoal.devtools.testing.controlplane` starts etcd and kube-apiserver (built by
  ``hack/build-control-plane.sh``) on loopback and installs the CRDs.
- :mod:`shoal.devtools.testing.prometheus` runs a real Prometheus scraping given targets.
- :func:`require` turns "this server is not here" into a visible skip, or into a failure
  where servers are required (``SHOAL_REQUIRE_SERVERS=1``, as ``make test`` and CI set it).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]


def servers_required() -> bool:
    """Whether a missing server is a failure (CI) rather than a skip (a developer's laptop)."""
    return os.environ.get("SHOAL_REQUIRE_SERVERS", "") not in ("", "0", "false", "no")


def require(condition: bool, reason: str) -> None:
    """Skip the calling test with ``reason`` unless ``condition``; fail instead where required."""
    if condition:
        return
    import pytest

    if servers_required():
        pytest.fail(f"{reason} (SHOAL_REQUIRE_SERVERS is set, so this is an error)")
    pytest.skip(reason)
