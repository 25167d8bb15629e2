"""The router's refit from client feedback: read the counts, refit, store the new version.

Run for every RoutingPolicy with ``spec.feedback.enabled`` by the operator's periodic loop
(:mod:`shoal.operator.resync`, schedule "router refit", at the re-check cadence); a policy is
refit at most once per ``spec.feedback.refitIntervalSeconds``. One attempt:

1. reads, from Prometheus, the cumulative feedback counts (``shoal_feedback_total``) and score
   sums (``shoal_feedback_score_total``) per model and router cluster of *every fleet that
   uses the policy*, summed over those fleets and over every ingress process that counted
   them within :data:`FEEDBACK_LOOKBACK` (each process has series of its own, so the counts
   survive a restarted ingress replica and a lost Ray head). The fleets serve the same artifact (the
   policy's), so a cluster index means the same queries in each, and a model's answers on a
   cluster are evidence of its quality there whichever fleet served them: one posterior from
   all of them learns fastest and keeps the fleets routing alike. Feedback on answers the
   router did not route (a model named in the request: no cluster) and on models the router
   does not rank (a fallback model outside the artifact) cannot move a table and is left out;
2. blends them with the calibration table (:func:`shoal.routing.refit.refit_artifact`, the
   prior worth ``priorWeight`` events, cells ranked by a lower confidence bound weighted
   ``pessimism``), checks the refit router on the calibration set (embedded once per
   calibration fit and kept in memory), and checks with the feedback itself that it routes
   better than the artifact in use (:func:`shoal.routing.refit.count_guard`: the lower 95%
   bound of the traffic-weighted accuracy change where a cluster's choice changes must
   exceed ``minImprovementPercent``);
3. accepted: writes the new artifact version into the policy's artifact ConfigMap (the fit's
   fingerprint kept, so the policy's reconcile reports it rather than refitting) and the
   status (``artifact``, ``routerArtifactVersion``, ``lastRefitTime``, ``feedbackEvents``,
   ``RouterRefit=True``); the fleets then follow like after a fit, and each ingress replica
   swaps to the new version in place (:mod:`shoal.serving.ranking`);
4. refused: ``RouterRefit=False`` with the reason (``NoFeedback``, ``WorseOnCalibration``,
   ``FeedbackMismatch``, ``MetricsUnavailable``) and a Warning event; the artifact in use
   stays. A refit the feedback guard does not show better (``Shadow``), and every refit in
   ``mode: Observe`` (``Observing``), is kept in shadow: ``RouterRefit=False``, a Normal
   event, ``status.shadowRefit`` with what it would change (estimated accuracy change and
   its lower bound, clusters and traffic share whose choice would change), and the same in
   the operator's metrics (``shoal_router_shadow_refit_*``; every attempt counts in
   ``shoal_router_refit_attempts_total`` by reason).

The counts are cumulative, and the prior is always the calibration table, so a refit never
compounds an earlier one and a refit from unchanged counts is skipped (no new version).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from shoal.api.v1alpha1 import API_VERSION, RoutingPolicy
from shoal.api.v1alpha1.policy import RouterArtifactStatus
from shoal.autoscaling.prometheus import router_metric_names
from shoal.contract.serve import FEEDBACK_LOGGED_METRIC
from shoal.operator import events, metrics
from shoal.operator.gateway import WRITE_ERRORS, KubeGateway
from shoal.operator.policies import (
    CalibrationUnavailable,
    artifact_status,
    fit_fingerprint,
    read_api_key,
    read_calibration,
)
from shoal.planning import names
from shoal.planning.artifacts import FINGERPRINT_ANNOTATION, artifact_configmap
from shoal.planning.conditions import set_condition
from shoal.planning.status import ROUTER_REFIT
from shoal.planning.verification import policy_gate

if TYPE_CHECKING:
    from shoal.routing.refit import HeldOut

log = logging.getLogger(__name__)

#: Reason of ``RouterRefit=False`` when Prometheus cannot be read.
METRICS_UNAVAILABLE = "MetricsUnavailable"
#: Metric names of the feedback counters, as the ingress writes them and as Ray's metrics
#: agent exports them (``ray_`` prefix).
EVENTS = router_metric_names("shoal_feedback_total")
SCORES = router_metric_names("shoal_feedback_score_total")
LOGGED = router_metric_names(FEEDBACK_LOGGED_METRIC)
#: How far back the refit finds the feedback series of ingress processes that are gone
#: (restarted replicas, a lost Ray head): Prometheus's default retention. Each ingress
#: process counts in series of its own (``ingress_instance``), so a process that goes takes
#: nothing with it that Prometheus held; feedback of processes gone for longer is dropped.
FEEDBACK_LOOKBACK = "15d"


class FeedbackUnavailable(Exception):
    """The feedback counts cannot be read (Prometheus down, not configured, or erroring)."""


@dataclass(frozen=True)
class FeedbackRow:
    """One (model, cluster) cell's cumulative counts, all the policy's fleets together."""

    model: str
    cluster: str
    events: float
    score_sum: float


@dataclass(frozen=True)
class LoggedRow:
    """One (model, cluster, split) cell's sums of feedback on logged routing decisions: the
    ingress's ``shoal_feedback_logged_total`` by ``stat``, all the policy's fleets together."""

    model: str
    cluster: str
    split: str
    events: float
    score: float
    weighted: float
    weighted_sq: float


class FeedbackSource(Protocol):
    """Where feedback counts come from (Prometheus in a cluster)."""

    def counts(self, namespace: str, fleets: Sequence[str]) -> list[FeedbackRow]: ...

    def logged(self, namespace: str, fleets: Sequence[str]) -> list[LoggedRow]: ...


def _fleet_matcher(fleets: Sequence[str]) -> str:
    # Fleet names are DNS names: a dot is the only regex metacharacter they can hold.
    return "|".join(f.replace(".", "\\\\.") for f in sorted(fleets))


def _lasting(name: str, sel: str) -> str:
    """Each series' highest value within :data:`FEEDBACK_LOOKBACK`: a counter of one ingress
    process (the series carry its name) only grows, so that is the process's count, also
    when the process is gone (restarted, or lost with the Ray head)."""
    return f"max_over_time({name}{{{sel}}}[{FEEDBACK_LOOKBACK}])"


def feedback_queries(namespace: str, fleets: Sequence[str]) -> dict[str, str]:
    """PromQL of the feedback counts of ``fleets`` (all in the policy's ``namespace``), summed
    by model and cluster over every ingress process seen within :data:`FEEDBACK_LOOKBACK`
    (pure). Both labels are the scrape target's, set by Kubernetes (see
    :func:`shoal.autoscaling.prometheus.fleet_scope`): a pod elsewhere cannot add to them."""
    sel = f'namespace="{namespace}", fleet=~"{_fleet_matcher(fleets)}"'

    def summed(metric_names: Sequence[str]) -> str:
        # One term per spelling joined with `or`, as the autoscaler's queries do.
        return " or ".join(f"sum by (model, cluster) ({_lasting(n, sel)})" for n in metric_names)

    return {"events": summed(EVENTS), "score_sum": summed(SCORES)}


def logged_query(namespace: str, fleets: Sequence[str]) -> str:
    """PromQL of the logged-feedback sums of ``fleets`` in ``namespace``, by model, cluster,
    split and stat, over every ingress process seen within :data:`FEEDBACK_LOOKBACK` (pure)."""
    sel = f'namespace="{namespace}", fleet=~"{_fleet_matcher(fleets)}"'
    return " or ".join(f"sum by (model, cluster, split, stat) ({_lasting(n, sel)})" for n in LOGGED)


def logged_rows(body: Any) -> list[LoggedRow]:
    """The rows of a Prometheus answer to :func:`logged_query` (pure)."""
    _vector(body)  # the same checks of the answer's shape
    cells: dict[tuple[str, str, str], dict[str, float]] = {}
    for item in body["data"].get("result") or []:
        metric = item.get("metric") or {}
        try:
            value = float((item.get("value") or (None, "nan"))[1])
        except (TypeError, ValueError):
            continue
        if value == value and value >= 0:
            key = (str(metric.get("model", "")), str(metric.get("cluster", "")),
                   str(metric.get("split", "")))  # fmt: skip
            cells.setdefault(key, {})[str(metric.get("stat", ""))] = value
    return [
        LoggedRow(
            model,
            cluster,
            split,
            v.get("events", 0.0),
            v.get("score", 0.0),
            v.get("weighted_score", 0.0),
            v.get("weighted_score_sq", 0.0),
        )
        for (model, cluster, split), v in sorted(cells.items())
        if v.get("events", 0.0) > 0
    ]


def _vector(body: Any) -> dict[tuple[str, str], float]:
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise FeedbackUnavailable(f"Prometheus refused the query: {error or 'malformed answer'}")
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise FeedbackUnavailable(f"Prometheus answered a {data.get('resultType')!r}, not a vector")
    out: dict[tuple[str, str], float] = {}
    for item in data.get("result") or []:
        metric = item.get("metric") or {}
        try:
            value = float((item.get("value") or (None, "nan"))[1])
        except (TypeError, ValueError):
            continue
        if value == value and value >= 0:  # not NaN
            out[(str(metric.get("model", "")), str(metric.get("cluster", "")))] = value
    return out


class PrometheusFeedback:
    """Feedback counts from a Prometheus server's ``/api/v1/query``."""

    def __init__(
        self, url: str, *, timeout: float = 5.0, client: httpx.Client | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _query(self, promql: str) -> dict[tuple[str, str], float]:
        try:
            resp = self._client.get(f"{self.url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise FeedbackUnavailable(f"Prometheus at {self.url} is unreachable: {exc}") from exc
        try:
            body = resp.json()
        except ValueError as exc:
            raise FeedbackUnavailable(
                f"Prometheus at {self.url} answered HTTP {resp.status_code}, not JSON"
            ) from exc
        return _vector(body)

    def counts(self, namespace: str, fleets: Sequence[str]) -> list[FeedbackRow]:
        """Every (model, cluster) with feedback; :class:`FeedbackUnavailable` on failure."""
        queries = feedback_queries(namespace, fleets)
        events_by = self._query(queries["events"])
        scores_by = self._query(queries["score_sum"])
        return [
            FeedbackRow(model, cluster, n, scores_by.get((model, cluster), 0.0))
            for (model, cluster), n in sorted(events_by.items())
        ]

    def logged(self, namespace: str, fleets: Sequence[str]) -> list[LoggedRow]:
        """The sums of feedback on logged routing decisions, by model, cluster and split
        (empty when the ingress writes none); :class:`FeedbackUnavailable` on failure."""
        try:
            resp = self._client.get(
                f"{self.url}/api/v1/query", params={"query": logged_query(namespace, fleets)}
            )
            body = resp.json()
        except httpx.HTTPError as exc:
            raise FeedbackUnavailable(f"Prometheus at {self.url} is unreachable: {exc}") from exc
        except ValueError as exc:
            raise FeedbackUnavailable(f"Prometheus at {self.url} answered no JSON") from exc
        return logged_rows(body)


class NoFeedbackSource:
    """What the operator uses without ``SHOAL_PROMETHEUS_URL``: every read fails, saying so."""

    def counts(self, namespace: str, fleets: Sequence[str]) -> list[FeedbackRow]:
        raise FeedbackUnavailable(
            "no Prometheus configured (SHOAL_PROMETHEUS_URL is empty): the operator cannot "
            "read the feedback counts; set it (Helm value prometheus.url)"
        )

    def logged(self, namespace: str, fleets: Sequence[str]) -> list[LoggedRow]:
        raise FeedbackUnavailable("no Prometheus configured (SHOAL_PROMETHEUS_URL is empty)")


@dataclass(frozen=True)
class Tally:
    """Feedback rows sorted into what can move the router's tables and what cannot."""

    records: list[tuple[int, str, float, float]]
    unrouted: float
    unranked: float
    foreign: list[str]


def tally(rows: Sequence[FeedbackRow], models: Sequence[str], clusters: int) -> Tally:
    """Usable ``(cluster, model, events, score_sum)`` records from ``rows`` (pure).

    Rows without a cluster (requests that named a model) and rows of models the router does
    not rank are counted aside; a cluster index outside the router's is *foreign*: feedback
    counted against another fit's clusters. Score sums are capped at the events (the two
    counters are scraped a moment apart).
    """
    known = set(models)
    records: list[tuple[int, str, float, float]] = []
    unrouted = unranked = 0.0
    foreign: list[str] = []
    for row in rows:
        if row.model not in known:
            unranked += row.events
            continue
        if row.cluster == "":
            unrouted += row.events
            continue
        try:
            cluster = int(row.cluster)
        except ValueError:
            cluster = -1
        if not 0 <= cluster < clusters:
            foreign.append(row.cluster)
            continue
        records.append((cluster, row.model, row.events, min(row.score_sum, row.events)))
    return Tally(records, unrouted, unranked, sorted(set(foreign)))


def split_held_out(
    records: Sequence[tuple[int, str, float, float]],
    logged: Sequence[LoggedRow],
    models: Sequence[str],
    clusters: int,
) -> tuple[list[tuple[int, str, float, float]], HeldOut | None]:
    """The records a refit learns from (``records`` less the held-out share's events) and
    the held-out share as :class:`~shoal.routing.refit.HeldOut` (pure). None when the ingress
    logs no decisions (no logged feedback at all): the guard then falls back to the counts.
    Held-out events on models the router does not rank count in the sample (neither router
    would choose them); rows of clusters outside the router's are left out."""
    import numpy as np

    from shoal.routing.refit import HeldOut

    if not logged:
        return list(records), None
    index = {m: i for i, m in enumerate(models)}
    per_cell = np.zeros((clusters, len(models)))
    weighted = np.zeros_like(per_cell)
    weighted_sq = np.zeros_like(per_cell)
    scores = np.zeros_like(per_cell)
    total = 0.0
    for row in logged:
        if row.split != "heldout":
            continue
        try:
            cluster = int(row.cluster)
        except ValueError:
            continue
        if not 0 <= cluster < clusters:
            continue
        total += row.events
        if row.model in index:
            at = (cluster, index[row.model])
            per_cell[at] += row.events
            scores[at] += row.score
            weighted[at] += row.weighted
            weighted_sq[at] += row.weighted_sq
    fit = []
    for cluster, model, n, score in records:
        held = per_cell[cluster, index[model]]
        left = max(0.0, n - held)
        fit.append(
            (cluster, model, left, min(left, max(0.0, score - scores[cluster, index[model]])))
        )
    return fit, HeldOut(total, per_cell, weighted, weighted_sq)


@dataclass
class RefitState:
    """The operator's refit memory: when each policy was last attempted, and calibration
    sets already embedded (one per policy, for the fit they belong to)."""

    source: FeedbackSource
    attempted: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    calibration: dict[tuple[str, str], tuple[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str) -> RefitState:
        return cls(PrometheusFeedback(url) if url else NoFeedbackSource())


#: Reasons after which the next attempt waits a whole refit interval (the others are retried
#: at the re-check cadence: feedback may arrive, Prometheus may come back).
_SETTLED = ("Refit", "WorseOnCalibration", "Unchanged", "Shadow", "Observing")
#: Reason of ``RouterRefit=False`` in ``mode: Observe``.
OBSERVING = "Observing"


@dataclass(frozen=True)
class RefitOutcome:
    """What one attempt did (``reason`` as in the condition; ``Unchanged``: no new feedback)."""

    attempted: bool
    reason: str = ""
    message: str = ""
    version: int | None = None
    status_changed: bool = False


def feedback_enabled(body: Any) -> bool:
    """Whether a policy object asks for refits (cheap: no validation)."""
    spec = body.get("spec") or {}
    return spec.get("strategy", "cluster") == "cluster" and bool(
        (spec.get("feedback") or {}).get("enabled")
    )


def _embedded_calibration(
    gw: KubeGateway, state: RefitState, policy: RoutingPolicy, models: Sequence[str]
) -> tuple[str, Any]:
    """(fit fingerprint, CalibrationSet) of the policy's calibration data, embedded once."""
    from shoal.routing import embedder_for_policy, parse_calibration
    from shoal.routing.refit import calibration_set

    data, source = read_calibration(gw, policy)
    fp = fit_fingerprint(policy, data)
    key = (policy.metadata.namespace or "default", policy.metadata.name)
    cached = state.calibration.get(key)
    if cached is not None and cached[0] == fp:
        return cached
    spec = policy.spec.embedder
    embedder = embedder_for_policy(
        spec.type, endpoint=spec.endpoint, model=spec.model, api_key=read_api_key(gw, policy)
    )
    cal = calibration_set(parse_calibration(data, source=source), embedder, models)
    state.calibration[key] = (fp, cal)
    return fp, cal


def refit_policy(
    gw: KubeGateway,
    state: RefitState,
    body: Any,
    fleets: Sequence[str],
    now: datetime,
    clock: float | None = None,
) -> RefitOutcome:
    """One refit attempt for the policy ``body`` (see the module docstring); never raises for
    a missing or unreadable input, which it reports in the ``RouterRefit`` condition."""
    if not feedback_enabled(body):
        return RefitOutcome(False)
    policy = RoutingPolicy.model_validate(dict(body))
    feedback = policy.spec.feedback
    assert feedback is not None
    ns, name = policy.metadata.namespace or "default", policy.metadata.name
    previous = policy.status
    kept = previous.artifact if previous else None
    if kept is None:
        return RefitOutcome(False, message="no fitted artifact yet")
    # The refit embeds the calibration set at the policy's embedder, as a fit does: only once
    # the operator verified it for this generation (destination, key, calibration).
    waiting, unverified = policy_gate(policy)
    if waiting is not None or unverified is not None:
        return RefitOutcome(False, message=waiting or (unverified.message if unverified else ""))
    tick = time.monotonic() if clock is None else clock
    last = state.attempted.get((ns, name))
    if (
        last is not None
        and last[1] in _SETTLED
        and tick - last[0] < feedback.refit_interval_seconds
    ):
        return RefitOutcome(False, message="refit interval not over")
    from shoal.routing import artifact_checksum

    cm = gw.get("v1", "ConfigMap", ns, kept.config_map)
    blob = base64.b64decode(((cm or {}).get("binaryData") or {}).get(names.ARTIFACT_KEY, ""))
    if cm is None or artifact_checksum(blob) != kept.checksum:
        return RefitOutcome(False, message="the artifact ConfigMap does not hold the artifact")
    outcome = _attempt(_Job(gw, body, policy, now), state, blob, kept, fleets)
    state.attempted[(ns, name)] = (tick, outcome.reason)
    return outcome


def _attempt(
    job: _Job, state: RefitState, blob: bytes, kept: RouterArtifactStatus, fleets: Sequence[str]
) -> RefitOutcome:
    from shoal.routing.refit import (
        MISMATCH,
        NO_FEEDBACK,
        SHADOW,
        Feedback,
        refit_artifact,
        same_feedback,
        stored_feedback,
    )

    gw, policy, now = job.gw, job.policy, job.now
    feedback = policy.spec.feedback
    assert feedback is not None
    if not fleets:
        return _report(job, None, False, NO_FEEDBACK, "no fleet uses this policy", None)
    try:
        rows = state.source.counts(policy.metadata.namespace or "default", fleets)
    except FeedbackUnavailable as exc:
        return _report(
            job, None, False, METRICS_UNAVAILABLE,
            f"cannot read the feedback counts: {exc}; the router keeps version {kept.version}",
            None,
        )  # fmt: skip
    t = tally(rows, kept.models, kept.clusters)
    if t.foreign:
        return _report(
            job, None, False, MISMATCH,
            f"feedback names clusters {', '.join(t.foreign)}, the router has {kept.clusters}: "
            "it was counted for another fit (the ingress serves an older artifact, or the "
            "fleets' metrics mix routers); the router keeps its tables until the counts match",
            None,
        )  # fmt: skip
    try:
        logged = state.source.logged(policy.metadata.namespace or "default", fleets)
    except FeedbackUnavailable as exc:
        return _report(
            job, None, False, METRICS_UNAVAILABLE,
            f"cannot read the logged feedback: {exc}; the router keeps version {kept.version}",
            None,
        )  # fmt: skip
    records, held = split_held_out(t.records, logged, kept.models, kept.clusters)
    fb = Feedback.from_records(records, models=kept.models, clusters=kept.clusters)
    aside = ""
    if t.unrouted or t.unranked:
        aside = (
            f" ({round(t.unrouted)} events on answers of a named model and "
            f"{round(t.unranked)} on models the router does not rank were left out)"
        )
    if fb.total >= feedback.min_events and same_feedback(fb, stored_feedback(blob)):
        message = f"no new feedback since version {kept.version}"
        conds = policy.status.conditions if policy.status else []
        before = next((c for c in conds if c.type == ROUTER_REFIT), None)
        if before is None or before.status != "True":  # after an outage, say all is well
            _report(job, None, True, "Refit", f"version {kept.version} in use; {message}", fb.total)
        return RefitOutcome(True, "Unchanged", message, kept.version)
    try:
        fp, cal = _embedded_calibration(gw, state, policy, kept.models)
    except CalibrationUnavailable as exc:
        return _report(
            job, None, False, exc.problem.reason,
            f"cannot check a refit on the calibration set: {exc.problem.message}", fb.total,
        )  # fmt: skip
    except Exception as exc:  # embedder down, bad calibration rows: the fit reports them too
        return _report(
            job, None, False, "CalibrationUnavailable",
            f"cannot check a refit on the calibration set: {exc}", fb.total,
        )  # fmt: skip
    result = refit_artifact(
        blob,
        fb,
        prior_weight=float(feedback.prior_weight),
        calibration=cal,
        max_regression=float(Decimal(feedback.max_calibration_regression_percent)) / 100.0,
        now=now,
        min_events=feedback.min_events,
        pessimism=float(Decimal(feedback.pessimism)),
        guard_margin=float(Decimal(feedback.min_improvement_percent)) / 100.0,
        held_out=held,
    )
    observe = feedback.mode == "Observe"
    if result.guard is not None and (result.reason == SHADOW or (observe and result.accepted)):
        reason = SHADOW if result.reason == SHADOW else OBSERVING
        message = result.message
        if reason == OBSERVING:
            message = (
                f"observing (spec.feedback.mode: Observe): the refit from {fb.total} feedback "
                f"events would be version {result.version}: {result.message}"
            )
        shadow = {**result.guard.as_status(), "reason": reason, "at": _stamp(now)}
        return _report(
            job, None, False, reason,
            f"{message}; the router keeps version {kept.version}" + aside, fb.total,
            shadow=shadow,
        )  # fmt: skip
    if not result.accepted or result.artifact is None:
        message = result.message
        if result.reason == NO_FEEDBACK:
            message = (
                f"{fb.total} feedback events on the router's clusters from fleets "
                f"{', '.join(sorted(fleets))}; a refit needs {feedback.min_events} "
                "(spec.feedback.minEvents)" + aside
            )
        else:
            message += (
                f"; the router keeps version {kept.version}. Check the feedback scores the "
                "clients send, or raise spec.feedback.maxCalibrationRegressionPercent or "
                "priorWeight to trust the calibration data more"
            )
        return _report(job, None, False, result.reason, message, fb.total)
    ns = policy.metadata.namespace or "default"
    existing = gw.get("v1", "ConfigMap", ns, kept.config_map) or {}
    fingerprint = ((existing.get("metadata") or {}).get("annotations") or {}).get(
        FINGERPRINT_ANNOTATION, fp
    )
    artifact = artifact_status(kept.config_map, result.artifact)
    try:
        gw.apply(artifact_configmap(policy, result.artifact, fingerprint, artifact.checksum))
    except WRITE_ERRORS as exc:
        return _report(
            job, None, False, exc.reason, f"cannot store the refit artifact: {exc}", fb.total
        )
    return _report(job, artifact, True, result.reason, result.message + aside, fb.total)


@dataclass(frozen=True)
class _Job:
    """One attempt's inputs."""

    gw: KubeGateway
    body: Any
    policy: RoutingPolicy
    now: datetime


def _figures(shadow: Any) -> dict[str, Any]:
    """A shadow refit's figures without the time it was computed."""
    return {k: v for k, v in (shadow or {}).items() if k != "at"}


def _stamp(now: datetime) -> str:
    from datetime import UTC

    return now.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _report(
    job: _Job,
    artifact: RouterArtifactStatus | None,
    ok: bool,
    reason: str,
    message: str,
    events_seen: int | None,
    shadow: dict[str, Any] | None = None,
) -> RefitOutcome:
    """Write the attempt into the policy's status (and an event when it changed anything)."""
    policy = job.policy
    ns, name = policy.metadata.namespace or "default", policy.metadata.name
    previous = policy.status
    conds = list(previous.conditions) if previous else []
    before = next((c for c in conds if c.type == ROUTER_REFIT), None)
    conds = set_condition(
        conds,
        type=ROUTER_REFIT,
        status=ok,
        reason=reason,
        message=message,
        generation=policy.metadata.generation,
        now=job.now,
    )
    patch: dict[str, Any] = {
        "conditions": [c.model_dump(mode="json", by_alias=True) for c in conds],
    }
    if events_seen is not None:
        patch["feedbackEvents"] = events_seen
    if shadow is not None:
        patch["shadowRefit"] = shadow
    elif artifact is not None:
        patch["shadowRefit"] = None  # applied: no refit is in shadow any more
    if artifact is not None:
        patch["artifact"] = artifact.model_dump(mode="json", by_alias=True)
        patch["routerArtifactVersion"] = artifact.version
        patch["lastRefitTime"] = artifact.model_dump(mode="json", by_alias=True)["refitAt"]
    old = previous.model_dump(mode="json", by_alias=True) if previous else {}
    changed = any(old.get(k) != v for k, v in patch.items())
    if changed:
        job.gw.patch_status(API_VERSION, RoutingPolicy.KIND, ns, name, patch)
    from shoal.routing.refit import NO_FEEDBACK, SHADOW

    if artifact is not None:
        events.post(job.body, warning=False, reason="Refit", message=message)
    elif reason in (SHADOW, OBSERVING) and _figures(old.get("shadowRefit")) != _figures(shadow):
        # What a shadow refit would do is news whenever its figures move, never a fault.
        events.post(job.body, warning=False, reason=reason, message=message)
    elif reason != NO_FEEDBACK and (before is None or before.reason != reason):
        # A refusal is a Warning once per verdict (not "no feedback yet", which is normal).
        events.post(job.body, warning=True, reason=reason, message=message)
    in_use = artifact or (previous.artifact if previous else None)
    metrics.REFITS.labels(ns, name, reason).inc()
    if shadow is not None:
        for bound, key in (("estimate", "estimatedChangePercent"), ("lower", "lowerBoundPercent")):
            metrics.SHADOW_CHANGE.labels(ns, name, bound).set(float(shadow[key]))
        metrics.SHADOW_CLUSTERS.labels(ns, name).set(shadow["clustersChanged"])
    log.info("router refit of %s/%s: %s: %s", ns, name, reason, message)
    return RefitOutcome(True, reason, message, in_use.version if in_use else None, changed)
