"""One lock per fleet: reconciles, autoscaler evaluations and the finalizer of a fleet run one
at a time, each on the fleet as it is when it gets the lock.

A reconcile never rolls back the autoscaler's latest decision (it reads the fleet after the
decision was written), and never re-creates children the finalizer has just deleted (it sees
the deletionTimestamp, or no fleet at all).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shoal.api.v1alpha1 import API_VERSION, ModelFleet
from shoal.operator.gateway import KubeGateway


class FleetLocks:
    """The operator's per-fleet locks (created on first use, dropped when the fleet goes)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted fleet's lock (a holder keeps its own reference meanwhile)."""
        with self._guard:
            self._locks.pop((namespace, name), None)

    @contextmanager
    def held(self, namespace: str, name: str) -> Iterator[None]:
        """Hold the lock of ``namespace/name`` (no read): for kinds other than fleets, such as
        policies, whose fit and refit both write the policy's artifact."""
        with self._lock(namespace, name):
            yield

    @contextmanager
    def hold(self, gw: KubeGateway, body: Any) -> Iterator[dict[str, Any] | None]:
        """Hold the fleet's lock; yield the fleet as it is now (None once it is gone).

        "As it is now" is the gateway's read: the operator's watch cache where it has one,
        which also holds every status the operator wrote, so it is never older than the last
        decision made under this lock.
        """
        meta = body["metadata"]
        ns, name = meta.get("namespace") or "default", meta["name"]
        with self._lock(ns, name):
            yield gw.get(API_VERSION, ModelFleet.KIND, ns, name)
