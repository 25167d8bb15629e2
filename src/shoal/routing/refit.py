"""Refit a router's quality tables from client feedback (pure; the operator calls it).

Feedback arrives as counts per cluster and model: how many scored answers (``events``) and
the sum of their scores in [0, 1] (``score_sum``), both cumulative, as Prometheus counters
hold them. Each cluster's per-model quality becomes the posterior mean of a prior worth
``prior_weight`` pseudo-events at the calibration table's value::

    quality = (prior_weight * calibration + score_sum) / (prior_weight + events)

so a cluster with no feedback keeps its calibration value and one with many events follows
them. The prior is always the *calibration* table (kept in the artifact as
``prior_quality`` once refit), so repeated refits from cumulative counts never compound.

A refit is refused, with a reason, when the refit router's accuracy on the calibration set
(embedded; mean of per-task accuracies) would fall more than ``max_regression`` below the
calibration-fitted router's. :func:`refit_artifact` takes ``now`` instead of reading a
clock, and does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing.artifact import (
    ArtifactError,
    artifact_checksum,
    decode_artifact,
    encode_artifact,
)
from shoal.routing.fit import embed_all, score_matrices
from shoal.routing.scoring import minmax_rows
from shoal.routing.tables import TableRouter
from shoal.routing.types import Embedder, Sample

F64 = npt.NDArray[np.float64]

#: Reasons of a :class:`RefitResult` (one CamelCase word, as in status conditions).
REFIT = "Refit"
NO_FEEDBACK = "NoFeedback"
WORSE = "WorseOnCalibration"
MISMATCH = "FeedbackMismatch"
SHADOW = "Shadow"


@dataclass(frozen=True)
class Feedback:
    """Cumulative feedback per cluster and model: ``events`` and ``score_sum``, ``(k, m)``."""

    events: F64
    score_sum: F64

    @staticmethod
    def zeros(clusters: int, models: int) -> Feedback:
        """No feedback yet."""
        return Feedback(np.zeros((clusters, models)), np.zeros((clusters, models)))

    @staticmethod
    def from_records(
        records: Iterable[tuple[int, str, float, float]], *, models: Sequence[str], clusters: int
    ) -> Feedback:
        """From ``(cluster, model, events, score_sum)`` rows (one Prometheus series each).

        Rows naming an unknown model or a cluster out of range raise ``ValueError``: the
        feedback belongs to another artifact.
        """
        pos = {m: j for j, m in enumerate(models)}
        fb = Feedback.zeros(clusters, len(models))
        for cluster, model, events, total in records:
            if model not in pos:
                raise ValueError(f"feedback names model {model!r}, not in the router")
            if not 0 <= int(cluster) < clusters:
                raise ValueError(f"feedback names cluster {cluster}, the router has {clusters}")
            if events < 0 or total < 0 or total > events + 1e-9:
                raise ValueError(
                    f"feedback for {model!r} in cluster {cluster}: need 0 <= score sum "
                    f"<= events, got {total} and {events}"
                )
            fb.events[int(cluster), pos[model]] += float(events)
            fb.score_sum[int(cluster), pos[model]] += float(total)
        return fb

    @property
    def total(self) -> int:
        """Number of feedback events."""
        return round(float(self.events.sum()))

    def add(self, cluster: int, model: int, score: float) -> None:
        """Count one event (for replays; the arrays are updated in place)."""
        self.events[cluster, model] += 1.0
        self.score_sum[cluster, model] += score


def posterior_quality(prior: npt.NDArray[Any], feedback: Feedback, prior_weight: float) -> F64:
    """``(prior_weight * prior + score_sum) / (prior_weight + events)``, the prior where a
    cell has neither weight nor events."""
    if not prior_weight >= 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}")
    p = np.asarray(prior, dtype=np.float64)
    if feedback.events.shape != p.shape:
        raise ValueError(f"feedback has shape {feedback.events.shape}, the tables {p.shape}")
    denom = prior_weight + feedback.events
    num = prior_weight * p + feedback.score_sum
    out: F64 = np.divide(num, denom, out=p.copy(), where=denom > 0)
    return out


def posterior_stderr(prior: npt.NDArray[Any], feedback: Feedback, prior_weight: float) -> F64:
    """The standard deviation of each cell's Beta posterior: ``prior_weight`` pseudo-events
    at the calibration value plus the events, ``sqrt(q (1 - q) / (prior_weight + events + 1))``
    with ``q`` the posterior mean (:func:`posterior_quality`)."""
    q = posterior_quality(prior, feedback, prior_weight)
    out: F64 = np.sqrt(np.clip(q * (1.0 - q), 0.0, 0.25) / (prior_weight + feedback.events + 1.0))
    return out


def pessimistic_quality(
    prior: npt.NDArray[Any], feedback: Feedback, prior_weight: float, pessimism: float
) -> F64:
    """The posterior mean lowered by ``pessimism`` times the uncertainty feedback has not yet
    removed: ``mean - pessimism * (sd - sd_prior)`` rearranged so that a cell without
    feedback keeps its calibration value exactly, and a scored cell is ranked by a lower
    confidence bound *relative to* the unscored ones.

    Without it (``pessimism = 0``), bandit feedback lowers a chosen model's optimistic
    estimate towards its true value while the models nobody scored keep theirs, and the
    router moves to a model only because nobody scored it. With it, a model the feedback
    has measured keeps the certainty it earned (``pessimism * (sd_prior - sd)``) over one
    that only has the calibration prior; exploration then decides between them.
    """
    if not pessimism >= 0:
        raise ValueError(f"pessimism must be >= 0, got {pessimism!r}")
    mean = posterior_quality(prior, feedback, prior_weight)
    if pessimism == 0:
        return mean
    sd = posterior_stderr(prior, feedback, prior_weight)
    sd0 = posterior_stderr(prior, Feedback.zeros(*mean.shape), prior_weight)
    out: F64 = mean + pessimism * (sd0 - sd)
    return out


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration queries, embedded: vectors ``(n, d)``, quality ``(n, m)``, tasks."""

    vectors: npt.NDArray[np.float32]
    quality: F64
    tasks: tuple[str, ...]


def accuracy(router: TableRouter, cal: CalibrationSet, alpha: float | None = None) -> float:
    """Mean of per-task accuracies of the router's first choices on ``cal``."""
    choice = router.choose(cal.vectors, alpha=alpha)
    got = cal.quality[np.arange(choice.size), choice]
    names = sorted(set(cal.tasks))
    tasks = np.array(cal.tasks)
    return float(np.mean([got[tasks == t].mean() for t in names])) if names else 0.0


@dataclass(frozen=True)
class GuardResult:
    """What the feedback guard estimated: the traffic-weighted change of the mean score
    (``estimate``, accuracy units) from the tables in use to the refit, its lower bound,
    the clusters whose first choice would change and their share of the traffic, and
    whether that clears the margin (``adopt``)."""

    adopt: bool
    estimate: float
    lower: float
    changed_clusters: int
    changed_share: float
    events: int
    #: Which guard judged: ``Counts`` (:func:`count_guard`) or ``HeldOut``
    #: (:func:`held_out_guard`).
    guard: str = "Counts"

    def as_status(self) -> dict[str, Any]:
        """The verdict in status form (percent as decimal strings, 2 places)."""
        return {
            "estimatedChangePercent": f"{100 * self.estimate:.2f}",
            "lowerBoundPercent": f"{100 * self.lower:.2f}",
            "clustersChanged": self.changed_clusters,
            "trafficChangedPercent": f"{100 * self.changed_share:.2f}",
            "events": self.events,
            "guard": self.guard,
        }


def count_guard(
    in_use: TableRouter,
    refit: TableRouter,
    prior: npt.NDArray[Any],
    feedback: Feedback,
    prior_weight: float,
    *,
    margin: float = 0.0,
    z: float = 1.6448536269514722,
) -> GuardResult:
    """Whether ``refit`` routes better than ``in_use`` by more than ``margin``, from counts.

    Each cluster's first choice (the router's choice at its centroid) under both routers;
    where they differ, the change of the mean score is the difference of the two models'
    posteriors in that cluster (the calibration prior worth ``prior_weight`` events plus
    the feedback), with the variance of both. The changes are weighted by each cluster's
    share of the feedback (the traffic). The refit is adopted only when the lower bound
    ``estimate - z * stderr`` exceeds ``margin``: a switch to a model that feedback has not
    scored carries the prior's whole uncertainty and is not adopted on the prior alone. A
    refit that changes no cluster's choice is adopted (it moves the tables, not the
    routing at the centroids).

    Under ``alpha < 1`` the router trades quality for cost on purpose, so a change is
    judged by the router's own objective, in accuracy points: the quality difference plus
    the cost side of the blend, ``(1 - alpha) / alpha * span * (cost_old - cost_new)`` with
    costs normalised per cluster and ``span`` the cluster's range of posterior qualities
    (the blend's quality scale). Costs are known, so only the quality side is uncertain.
    """
    mean = posterior_quality(prior, feedback, prior_weight)
    sd = posterior_stderr(prior, feedback, prior_weight)
    old = in_use.choose(in_use.centroids)
    new = refit.choose(refit.centroids)
    per_cluster = feedback.events.sum(axis=1)
    total = float(per_cluster.sum())
    if total <= 0:
        return GuardResult(False, 0.0, 0.0, 0, 0.0, 0)
    share = per_cluster / total
    at = np.arange(mean.shape[0])
    changed = old != new
    diff = np.where(changed, mean[at, new] - mean[at, old], 0.0)
    alpha = max(refit.alpha, 1e-6)
    if alpha < 1.0:
        cn = minmax_rows(refit.cost.astype(np.float32)).astype(np.float64)
        span = mean.max(axis=1) - mean.min(axis=1)
        trade = (1.0 - alpha) / alpha * span * (cn[at, old] - cn[at, new])
        diff = diff + np.where(changed, trade, 0.0)
    var = np.where(changed, sd[at, new] ** 2 + sd[at, old] ** 2, 0.0)
    est = float((share * diff).sum())
    se = float(np.sqrt((share**2 * var).sum()))
    lower = est - z * se
    return GuardResult(
        bool(not changed.any() or lower > margin),
        est,
        lower,
        int(changed.sum()),
        float(share[changed].sum()),
        round(total),
    )


@dataclass(frozen=True)
class HeldOut:
    """Held-out logged feedback as the serving layer counts it: ``events`` (all held-out
    events on logged decisions), and per (cluster, model) the events ``per_cell``, the sums
    ``weighted`` of score / propensity and ``weighted_sq`` of its square."""

    events: float
    per_cell: F64
    weighted: F64
    weighted_sq: F64


def held_out_guard(
    in_use: TableRouter,
    refit: TableRouter,
    held: HeldOut,
    *,
    margin: float = 0.0,
    z: float = 1.6448536269514722,
) -> GuardResult:
    """Whether ``refit`` routes better than ``in_use`` by more than ``margin``, by the paired
    IPS estimate (:func:`shoal.routing.offpolicy.compare_tabulated`) on held-out logged
    feedback: the events no refit learnt from, each weighed by the inverse of the
    propensity its routing decision had. Each router acts by its first choice per cluster
    (at the centroid), as in :func:`count_guard`. Adopted only when the lower bound
    ``estimate - z * stderr`` exceeds ``margin``, or when no cluster's choice changes. The
    estimate is of quality (the mean score), whatever the router's ``alpha``."""
    from shoal.routing.offpolicy import compare_tabulated

    old = in_use.choose(in_use.centroids)
    new = refit.choose(refit.centroids)
    changed = old != new
    est = compare_tabulated(held.events, held.weighted, held.weighted_sq, new, old)
    value = est.value if np.isfinite(est.value) else 0.0
    lower = float(np.clip(est.lower(z), -1.0, 1.0)) if np.isfinite(est.stderr) else -1.0
    share = float(held.per_cell.sum(axis=1)[changed].sum() / held.events) if held.events else 0.0
    return GuardResult(
        bool(not changed.any() or lower > margin),
        float(value),
        lower,
        int(changed.sum()),
        share,
        round(held.events),
        "HeldOut",
    )


@dataclass(frozen=True)
class RefitResult:
    """What a refit decided: ``accepted`` with the new ``artifact``, or refused, and why."""

    accepted: bool
    reason: str
    message: str
    artifact: bytes | None
    version: int
    events: int
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    #: The feedback guard's verdict (None: no guard asked for).
    guard: GuardResult | None = None
    #: The refit kept in shadow when the guard refused it (its bytes, for reports).
    shadow: bytes | None = None


def artifact_version(header: dict[str, Any]) -> int:
    """The artifact's version: 1 when fitted, one more at every accepted refit."""
    return int(header.get("refit", {}).get("version", 1))


def refit_artifact(
    data: bytes,
    feedback: Feedback,
    *,
    prior_weight: float,
    calibration: CalibrationSet | None,
    max_regression: float,
    now: datetime,
    min_events: int = 1,
    pessimism: float = 0.0,
    guard_margin: float | None = None,
    held_out: HeldOut | None = None,
) -> RefitResult:
    """Blend the calibration prior with ``feedback`` and return the new artifact or a refusal.

    ``max_regression`` is in accuracy units (0.01 = one point); the check is skipped when
    ``calibration`` is None. The new artifact keeps the centroids, costs and parameters,
    stores the posterior as ``quality``, the calibration table as ``prior_quality`` and the
    counts as ``feedback_events`` / ``feedback_score_sum``; its header gains ``refit``
    (``version``, ``parent`` checksum, ``events``, ``prior_weight``, ``pessimism``,
    ``refit_at``). ``pessimism`` > 0 stores :func:`pessimistic_quality` instead of the
    posterior mean. With ``guard_margin`` set, the refit must also pass :func:`count_guard`
    against the artifact in use (``data``), else it is refused with reason ``Shadow`` and
    its bytes kept in ``shadow``; with ``held_out`` logged feedback too, the guard is
    :func:`held_out_guard` on it instead (``feedback`` should then hold the other share).
    """
    header, arrays = decode_artifact(data)
    version = artifact_version(header)
    try:
        prior = np.asarray(arrays.get("prior_quality", arrays["quality"]), dtype=np.float64)
    except KeyError as exc:
        raise ArtifactError(f"router artifact lacks array {exc}") from exc
    events = feedback.total
    if feedback.events.shape != prior.shape:
        return RefitResult(
            False,
            MISMATCH,
            f"feedback has shape {feedback.events.shape}, the router's tables {prior.shape} "
            "(clusters x models): it was counted for another artifact",
            None,
            version,
            events,
        )
    if events < min_events:
        return RefitResult(
            False, NO_FEEDBACK, f"{events} feedback events (need {min_events})", None, version, 0
        )
    posterior = pessimistic_quality(prior, feedback, prior_weight, pessimism)
    base = TableRouter.from_artifact(data).with_quality(prior)
    refit = base.with_quality(posterior)
    before = after = None
    if calibration is not None:
        before, after = accuracy(base, calibration), accuracy(refit, calibration)
        if after < before - max_regression:
            return RefitResult(
                False,
                WORSE,
                f"the refit router would score {100 * after:.2f}% on the calibration set, "
                f"{100 * (before - after):.2f} points below the calibration fit's "
                f"{100 * before:.2f}% (at most {100 * max_regression:.2f} allowed)",
                None,
                version,
                events,
                before,
                after,
            )
    new_header = {k: v for k, v in header.items() if k not in ("arrays", "payload_sha256")}
    new_header["refit"] = {
        "version": version + 1,
        "parent": artifact_checksum(data),
        "events": events,
        "prior_weight": float(prior_weight),
        "pessimism": float(pessimism),
        "refit_at": now.astimezone(UTC).replace(microsecond=0).isoformat(),
    }
    new_arrays = dict(arrays)
    new_arrays["quality"] = posterior.astype(np.float32)
    new_arrays["prior_quality"] = prior.astype(np.float32)
    new_arrays["feedback_events"] = feedback.events.astype(np.float32)
    new_arrays["feedback_score_sum"] = feedback.score_sum.astype(np.float32)
    blob = encode_artifact(new_header, new_arrays)
    shown = "" if after is None else f"; {100 * after:.2f}% on the calibration set"
    verdict = None
    if guard_margin is not None:
        in_use = TableRouter.from_artifact(data)
        if held_out is not None:
            verdict = held_out_guard(in_use, refit, held_out, margin=guard_margin)
        else:
            verdict = count_guard(in_use, refit, prior, feedback, prior_weight, margin=guard_margin)
        on = (
            f" by the off-policy estimate on {verdict.events} held-out logged events"
            if verdict.guard == "HeldOut"
            else " by the feedback counts (no held-out logged feedback)"
        )
        said = (
            f"estimated change {100 * verdict.estimate:+.2f} points (lower bound "
            f"{100 * verdict.lower:+.2f}, margin {100 * guard_margin:.2f}) over "
            f"{verdict.changed_clusters} clusters with {100 * verdict.changed_share:.1f}% "
            f"of the traffic{on}"
        )
        if not verdict.adopt:
            return RefitResult(
                False,
                SHADOW,
                f"the refit from {events} feedback events is kept in shadow: {said}",
                None,
                version,
                events,
                before,
                after,
                verdict,
                blob,
            )
        shown += f"; {said}"
    return RefitResult(
        True,
        REFIT,
        f"version {version + 1} from {events} feedback events{shown}",
        blob,
        version + 1,
        events,
        before,
        after,
        verdict,
    )


def calibration_set(
    samples: Sequence[Sample], embedder: Embedder, models: Sequence[str]
) -> CalibrationSet:
    """The calibration samples embedded, their quality in ``models`` order (the artifact's).

    Raises :class:`ValueError` when a sample lacks a score for one of ``models``.
    """
    missing = sorted({m for s in samples for m in models if m not in s.scores})
    if missing:
        raise ValueError(f"calibration samples lack scores for {', '.join(missing)}")
    vectors = embed_all(embedder, [s.prompt for s in samples])
    quality, _ = score_matrices(samples, models)
    return CalibrationSet(
        vectors=vectors,
        quality=quality.astype(np.float64),
        tasks=tuple(s.task or "default" for s in samples),
    )


def stored_feedback(data: bytes) -> Feedback | None:
    """The feedback counts an artifact was refit from (None: never refit)."""
    _, arrays = decode_artifact(data)
    if "feedback_events" not in arrays or "feedback_score_sum" not in arrays:
        return None
    return Feedback(
        np.asarray(arrays["feedback_events"], dtype=np.float64),
        np.asarray(arrays["feedback_score_sum"], dtype=np.float64),
    )


def same_feedback(a: Feedback, b: Feedback | None) -> bool:
    """Whether two counts are the same (to the float32 precision artifacts store them in)."""
    if b is None or a.events.shape != b.events.shape:
        return False
    return bool(
        np.allclose(a.events, b.events, rtol=1e-6, atol=1e-3)
        and np.allclose(a.score_sum, b.score_sum, rtol=1e-6, atol=1e-3)
    )
