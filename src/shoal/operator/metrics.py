"""Prometheus metrics of the operator: reconciles, their durations and outcomes, fits, the
router refits from feedback (and what a refit kept in shadow would change), and the
autoscaler's decisions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import kopf
from prometheus_client import Counter, Gauge, Histogram

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

DESIRED = Gauge(
    "shoal_autoscaler_desired_replicas",
    "Replicas the autoscaler wants per model (applied in Active mode, reported in DryRun).",
    ["namespace", "fleet", "model", "mode"],
)
DECISIONS = Counter(
    "shoal_autoscaler_decisions_total",
    "Per-model autoscaler decisions by direction (up, down, hold) and mode.",
    ["namespace", "fleet", "direction", "mode"],
)
BUDGET_UTILISATION = Gauge(
    "shoal_autoscaler_budget_utilisation",
    "Cost per hour of the decided replicas as a fraction of the fleet's budget.",
    ["namespace", "fleet"],
)
BUDGET_BINDING = Gauge(
    "shoal_autoscaler_budget_binding",
    "1 while the budget holds replicas below what load and SLOs ask for.",
    ["namespace", "fleet"],
)
EFFECTIVE_ALPHA = Gauge(
    "shoal_autoscaler_effective_alpha",
    "Router quality weight in force (the policy's alpha unless the budget binds).",
    ["namespace", "fleet"],
)
REFITS = Counter(
    "shoal_router_refit_attempts_total",
    "Router refits from feedback by outcome (the RouterRefit reason: Refit, Shadow, "
    "Observing, NoFeedback, ...).",
    ["namespace", "policy", "reason"],
)
SHADOW_CHANGE = Gauge(
    "shoal_router_shadow_refit_change_percent",
    "What the last refit kept in shadow would change: its estimated accuracy change in points "
    "(bound=estimate) and the lower 95% bound of it (bound=lower).",
    ["namespace", "policy", "bound"],
)
SHADOW_CLUSTERS = Gauge(
    "shoal_router_shadow_refit_clusters_changed",
    "Clusters whose first choice the last refit kept in shadow would change.",
    ["namespace", "policy"],
)
EVALUATIONS = Counter(
    "shoal_autoscaler_evaluations_total",
    "Fleet evaluations by result (ok, metrics_unavailable, off).",
    ["result"],
)


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
