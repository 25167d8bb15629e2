"""Fleets deleted right after they are created never keep their finalizer.

A fleet deleted while it is still being created (its create handler holding the fleet's
lock, a re-check or the autoscaler due on it, its RayService being written) must be released
as soon as its children are gone. Both cores are kept busy meanwhile, as in CI.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.operator.conftest import Cluster, fleet, policy, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def busy_cores() -> Iterator[None]:
    """Two processes that spin on a core each for the length of the test."""
    spin = "while True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def _delete(cluster: Cluster, name: str, wait: bool) -> None:
    """Delete a fleet (gone already is fine); with ``wait``, until it is gone (60 s)."""
    out = cluster.cp.kubectl("delete", "fleet", name, "-n", cluster.ns, "--ignore-not-found",
                             f"--wait={str(wait).lower()}", "--timeout=60s", check=False)  # fmt: skip
    if out.returncode != 0:
        left = (cluster.get("fleet", name) or {}).get("metadata")
        raise AssertionError(f"fleet {name} not deleted: {out.stderr}\nnow: {left}")


def test_create_then_delete_back_to_back_never_sticks(
    cluster: Cluster, operator: Any, busy_cores: None
) -> None:
    rng = random.Random(18)
    with operator():
        cluster.apply(
            policy("s", strategy="static", staticOrder=["alpha", "beta"], calibration=None)
        )
        # 5 waves of 10: each fleet deleted at a different age, from at once to past the
        # first re-check (3 s in these tests), so deletions meet every stage of a create.
        for wave in range(5):
            batch = [f"race-{wave}-{i}" for i in range(10)]
            for name in batch:
                cluster.apply(fleet(name, policy_name="s"))
                if rng.random() < 0.5:
                    _delete(cluster, name, wait=False)
            time.sleep(rng.uniform(0, 4))  # an age for the rest, not a wait for an outcome
            for name in batch:
                _delete(cluster, name, wait=False)
            for name in batch:
                _delete(cluster, name, wait=True)  # waits (60 s) for the finalizer to go
        assert cluster.names("fleet") == []
        wait_for("every child to be gone", lambda: cluster.names("rayservice") == [], 60)
        assert cluster.names("service") == []
