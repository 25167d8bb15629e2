"""Prometheus metrics of the operator itself: reconciles, their durations and outcomes, fits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import kopf
from prometheus_client import Counter, Histogram

T = TypeVar("T")

RECONCILES = Counter(
    "shoal_operator_reconciles_total",
    "Reconciles by kind and result (ok, waiting, blocked, error).",
    ["kind", "result"],
)
RECONCILE_SECONDS = Histogram(
    "shoal_operator_reconcile_duration_seconds",
    "Time to reconcile one object.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
FITS = Counter("shoal_operator_router_fits_total", "Router fits by result.", ["result"])


def result_of(exc: BaseException | None) -> str:
    """Metric label for how a reconcile ended."""
    if exc is None:
        return "ok"
    if isinstance(exc, kopf.TemporaryError):
        return "waiting"
    if isinstance(exc, kopf.PermanentError):
        return "blocked"
    return "error"


@contextmanager
def observed(kind: str) -> Iterator[None]:
    """Count and time one reconcile of ``kind``."""
    start = time.perf_counter()
    exc: BaseException | None = None
    try:
        yield
    except BaseException as e:
        exc = e
        raise
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - start)
        RECONCILES.labels(kind, result_of(exc)).inc()


def timed(kind: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` as one observed reconcile of ``kind``."""
    with observed(kind):
        return fn()
