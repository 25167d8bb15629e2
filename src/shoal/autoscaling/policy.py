"""Shoal's autoscaling policy: a pure function from metrics to replicas, with reasons.

``decide(spec, states, window, now)`` sizes every model of a fleet at once:

1. **Per model** (:func:`decide_model`), against its tier's SLO and ``targetOngoingRequests``:

   - *Bounds first.* A count outside the model's min/max (the spec changed) is clamped, even
     when metrics are missing.
   - *Hold on doubt.* Missing or stale metrics (older than ``stale_seconds``), or a failed
     source, hold the current count: the policy never guesses.
   - *Size from capacity.* Where the source reports the arrival rate and the engines'
     service time (:func:`capacity_need`), a replica carries ``target / service seconds``
     requests per second at its target concurrency, and the model needs the replicas that
     carry its arrival rate (projected ``lookahead_seconds`` ahead while it rises, at most
     ``max_growth`` times the rate now, and not while a queue drains), plus spare capacity
     for ``headroom_percent`` of the gap between the busiest short window of the burst
     window and now (the tier's ``headroomPercent`` overrides it), plus what drains the
     backlog within ``queue_drain_seconds``: the queue, and what will pile up before new
     replicas serve (``cold_start_seconds`` of the arrivals the ready replicas do not
     carry). A step shows first in the latest window (the newer half of the short one):
     beyond ``step_sigma`` Poisson standard deviations the model is sized for it at once.
     The queue is a correction, not the size: requests that piled up while replicas were
     cold do not ask for replicas by their count. Without those figures (no completions
     yet) the load in flight sizes it: ``ceil(in_flight / target)``.
   - *Count what is starting.* Replicas still starting are part of the count in force, so
     their capacity counts as arriving: a model is scaled up only when the count in force,
     starting replicas included, falls short. A TTFT p95 over the SLO or a nearly full KV
     cache asks for one more where replicas are busy and none is still starting (sized from
     capacity, not while a queue drains: the drain term sizes that).
   - *Bounded steps.* One decision at most multiplies the replicas by
     ``max_scale_up_factor`` (at least one more); scale-ups are paced by the tier's
     ``scaleUpCooldownSeconds`` (a cold model scales from zero at once).
   - *Release a burst's replicas.* Once a burst is over (arrivals down to
     ``release_share`` of the burst window's busiest rate) and its queue drained, the
     replicas it was sized for go in one step, down to what the capacity sizing asks for
     (headroom included) at the arrival rate plus ``release_sigma`` standard deviations of
     its noise, after the scale-down cooldown: the long window's peak in flight
     was the burst and its backlog, and holding it would pay for a burst that is gone.
   - *Bridge with spillover* (off unless ``spill_bridge`` is set and the caller names, for
     each model, the model that takes its spilled requests): while a model has replicas
     starting and its arrivals exceed what its ready replicas carry, the taker is sized for
     that excess too (:func:`bridge_spill`), so that a model of a faster-starting tier
     answers what the first choice cannot until its own replicas serve.
   - *Scale down slow.* Otherwise only when the sustained *peak* load of the long window
     would fit in fewer replicas at no more than ``scale_down_utilisation`` of the target (so N-1
     replicas still meet the SLO with room to spare: the gap between this and the scale-up
     threshold is the hysteresis that prevents 2-1-2 flapping), never below what the
     capacity sizing (headroom included) asks for, TTFT p95 is comfortably within the SLO
     and nothing queues; at most ``max_scale_down_fraction`` of the replicas at once; never
     within ``scaleDownCooldownSeconds`` of the last change. Zero only where the tier allows
     it and the model saw no traffic and no demand for the whole window.

2. **Budget** (:func:`apply_budget`): if the wanted replicas cost more per hour than the
   budget, replicas are taken away one at a time, each time from the model whose load would
   be lowest per remaining replica (the least needed replica first; the more expensive on a
   tie), never below minimums. While the budget binds, the router's quality weight ``alpha``
   is lowered in proportion (not below the budget's ``minAlpha``), which sends more queries to
   cheaper models; it comes back in steps once the fleet fits the budget with room to spare.

Everything is explained in words in each :class:`~shoal.autoscaling.types.ModelDecision`
and in the :class:`~shoal.autoscaling.types.FleetDecision` summary. No clock reads, no I/O:
the caller passes ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from shoal.api.v1alpha1 import ModelFleetSpec, ModelSpec, TierSpec
from shoal.autoscaling.types import (
    FleetDecision,
    MetricsWindow,
    ModelDecision,
    ModelMetrics,
    ModelState,
)
from shoal.contract import replica_range


@dataclass(frozen=True)
class PolicySettings:
    """Tunables of the policy (the tier's spec carries the rest)."""

    #: Metrics older than this hold the model where it is.
    stale_seconds: float = 60.0
    #: Scale down only if the peak load fits the smaller count at this fraction of the target.
    scale_down_utilisation: float = 0.9
    #: Scale down only while TTFT p95 is below this fraction of the SLO.
    slo_headroom: float = 0.8
    #: Safety margin of the scale-down rule, in standard deviations of a Poisson load.
    sqrt_margin: float = 1.5
    #: Most of the replicas removed in one step (at least one).
    max_scale_down_fraction: float = 0.5
    #: KV-cache use above which a model gets one more replica.
    kv_cache_high: float = 0.9
    #: Most a queue's arrival-to-completion ratio may scale the running load when sizing.
    max_growth: float = 4.0
    #: How far ahead rising load is projected when scaling up (about a replica's cold start
    #: plus one evaluation interval).
    lookahead_seconds: float = 60.0
    #: Smallest projected rise, as a share of one replica's target, that counts as a trend
    #: (smaller slopes are noise of a steady load, and would make replicas flap).
    min_rise: float = 0.5
    #: Spare capacity, in percent of the gap between the busiest short window of the burst
    #: window and the arrival rate now (the tier's ``headroomPercent`` overrides it).
    headroom_percent: int = 0
    #: Most one decision may multiply a model's replicas by (at least one more is allowed).
    max_scale_up_factor: float = 4.0
    #: A queue asks for the capacity that drains it within this many seconds.
    queue_drain_seconds: float = 90.0
    #: How long a new replica takes to serve (a tier's ``replicaStartSeconds`` overrides
    #: it). While the arrivals exceed what the ready replicas carry, the requests that will
    #: pile up meanwhile are part of the queue to drain (0 counts only the queue already
    #: there).
    cold_start_seconds: float = 30.0
    #: Arrivals over the latest window above the short window's rate by more than this many
    #: Poisson standard deviations are a step: the model is sized for the latest rate at
    #: once, not for the short window's average of old and new (0 turns this off).
    step_sigma: float = 3.0
    #: Once a burst is over, the replicas kept carry the arrival rate plus this many
    #: Poisson standard deviations of its short-window estimate (0: the rate alone).
    release_sigma: float = 2.0
    #: Once arrivals fall to this share of the burst window's busiest rate and no queue is
    #: left, the capacity sizing alone bounds a scale-down (0 turns this off): the long
    #: window's peak in flight was the burst and its backlog, not load to come.
    release_share: float = 0.5
    #: Restore alpha (in steps of alpha_step) once the wanted cost is below this budget share.
    alpha_recovery_share: Decimal = Decimal("0.9")
    alpha_step: Decimal = Decimal("0.1")
    #: Spillover's bridge (:func:`bridge_spill`): while a model's replicas start, the model
    #: that takes its spilled requests is sized for this many times the requests in flight
    #: its arrivals bring beyond what its ready replicas carry (0 turns this off; it acts
    #: only where the caller names the takers).
    spill_bridge: float = 0.0


def _arrivals(m: ModelMetrics) -> float | None:
    """The model's arrival rate: the short window's, else the rate window's demand."""
    return m.arrival_rate if m.arrival_rate is not None else m.demand_rate


def poisson_sd(rate: float, seconds: float) -> float:
    """Standard deviation of a Poisson rate ``rate`` estimated over ``seconds``: its count's
    ``sqrt(rate * seconds)`` over ``seconds`` (at least one arrival's worth of rate)."""
    return math.sqrt(max(rate, 1.0 / seconds) / seconds)


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()


def _fmt(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def fewest_replicas(peak: float, target: int, settings: PolicySettings) -> int:
    """Fewest replicas that carry ``peak`` requests in flight with room to spare.

    Each replica may run ``scale_down_utilisation`` of its target, less a safety margin of
    ``sqrt_margin`` standard deviations of a Poisson load (square-root staffing): a few
    replicas need proportionally more room than many, whose loads even out.
    """
    return staffed(peak, target * settings.scale_down_utilisation, settings.sqrt_margin)


def staffed(load: float, per: float, margin: float) -> int:
    """Fewest replicas (at least one) that hold ``load`` requests in flight at ``per`` each
    less ``margin`` standard deviations of a Poisson load: ``n * per - margin * sqrt(n *
    per) >= load`` (square-root staffing)."""
    n = 1
    while n * per - margin * math.sqrt(n * per) < load:
        n += 1
    return n


@dataclass(frozen=True)
class CapacityNeed:
    """What :func:`capacity_need` found: replicas, and the figures behind them."""

    replicas: int
    #: Requests per second one replica carries at its target concurrency.
    per_replica: float
    reason: str


def capacity_need(
    m: ModelMetrics,
    target: int,
    headroom_percent: int,
    settings: PolicySettings,
    *,
    ready: int | None = None,
    latest_seconds: float = 15.0,
) -> CapacityNeed | None:
    """Replicas that carry the model's arrivals at the SLO, or None without the figures.

    A replica carries ``target / service_seconds`` requests per second at ``target``
    requests in flight (Little's law), less a square-root margin of ``sqrt_margin`` Poisson
    standard deviations (:func:`staffed`). The rate to carry is the arrival rate (the latest
    window's where it stepped up, :func:`stepped_rate`), projected ``lookahead_seconds``
    ahead while it rises by more than ``min_rise`` of a replica (at most ``max_growth``
    times the rate now), plus ``headroom_percent`` of the gap between the busiest recent
    short window and now, plus the backlog spread over ``queue_drain_seconds``.

    The backlog is the queue (the larger of its short- and latest-window averages) plus what
    piles up before new replicas serve: while the arrivals exceed what the ``ready``
    replicas carry, that excess for ``cold_start_seconds``. Sized at the first sight of a
    step, the replicas that drain it start together instead of one batch an interval behind
    the growing queue.

    While a backlog drains the rise is not projected: the drain term sizes it, and a step
    smeared over the rate windows (with a Poisson wobble) looks like a ramp, which would
    size for the same jump twice.
    """
    rate = _arrivals(m)
    service = m.service_seconds
    if rate is None or service is None or service <= 0:
        return None
    per = target / service
    stepped = stepped_rate(rate, m.latest_arrival_rate, latest_seconds, settings.step_sigma)
    if stepped is not None:
        rate = stepped
    queued = max(m.waiting or 0.0, m.latest_waiting or 0.0)
    coming = 0.0
    if ready is not None and settings.cold_start_seconds > 0:
        shortfall = rate - ready * per
        if shortfall > 0:
            coming = shortfall * settings.cold_start_seconds
    waiting = queued + coming
    ahead = rate
    rise = max(0.0, m.arrival_trend or 0.0) * settings.lookahead_seconds
    if rise >= settings.min_rise * per and waiting < 1.0:
        ahead = min(rate + rise, rate * settings.max_growth)
    spare = headroom_percent / 100.0 * max(0.0, (m.peak_arrival_rate or 0.0) - rate)
    drain = waiting / settings.queue_drain_seconds if waiting >= 1.0 else 0.0
    # Requests in flight that rate brings (Little's law), staffed with the square-root
    # margin of the scale-down rule at the full target: a few replicas need proportionally
    # more room than many, whose loads even out.
    load = (ahead + spare + drain) * service
    replicas = staffed(load, target, settings.sqrt_margin) if load > 0 else 0
    if drain == 0:
        # Never fewer than the requests running now need at the target (a replica's service
        # time grows with its batch: one measured at a light load overstates its capacity).
        # Not while a queue drains: then every batch is full by design.
        running = max(0.0, (m.in_flight or 0.0) - (m.waiting or 0.0))
        replicas = max(replicas, math.ceil(running / target - 1e-9))
    parts = [
        f"{_fmt(rate)} req/s arriving"
        + (f" (a step: the rate of the last {latest_seconds:.0f}s)" if stepped is not None else "")
    ]
    if ahead > rate:
        parts.append(f"rising to {_fmt(ahead)} within {settings.lookahead_seconds:.0f}s")
    if drain > 0:
        parts.append(
            f"{_fmt(waiting)} queued to drain in {settings.queue_drain_seconds:.0f}s"
            + (f" ({_fmt(coming)} of them arriving while replicas start)" if coming >= 1 else "")
        )
    if spare > 0.05 * per:
        parts.append(f"headroom for {_fmt(spare)} req/s more ({headroom_percent}% of the swing)")
    why = (
        ", ".join(parts) + f": need {replicas} replicas at {per:.2f} req/s each "
        f"({target} in flight, {service:.1f}s a request)"
    )
    return CapacityNeed(replicas, per, why)


def stepped_rate(
    rate: float, latest: float | None, latest_seconds: float, sigma: float
) -> float | None:
    """The latest window's arrival rate where it is a step up from ``rate``, else None.

    A step: ``latest`` exceeds ``rate`` (the short window's, which averages the latest
    window with the one before) by more than ``sigma`` standard deviations of a Poisson
    count over ``latest_seconds``, ``sqrt(rate / latest_seconds)`` (at least one arrival's
    worth). Steady traffic's wobble stays below it; a jump to several times the rate shows
    at the first evaluation after it, where the short window has seen only part of it.
    """
    if sigma <= 0 or latest is None or latest <= rate or latest_seconds <= 0:
        return None
    return latest if latest - rate > sigma * poisson_sd(rate, latest_seconds) else None


def decide_model(
    model: ModelSpec,
    tier: TierSpec,
    state: ModelState,
    metrics: ModelMetrics | None,
    window: MetricsWindow,
    now: datetime,
    settings: PolicySettings,
) -> ModelDecision:
    """The replicas one model wants, and why (before the fleet's budget is applied)."""
    span = replica_range(model, tier)
    lo, hi = span.min, span.max
    n = state.replicas
    scaling = tier.autoscaling
    target = scaling.target_ongoing_requests
    slo = tier.slo.ttft_p95_milliseconds / 1000.0
    if scaling.replica_start_seconds is not None:
        # The tier says how long its replicas take to serve: the arrivals that pile up
        # meanwhile are sized from that, not from the operator's default.
        settings = replace(settings, cold_start_seconds=float(scaling.replica_start_seconds))

    def out(desired: int, reason: str) -> ModelDecision:
        desired = min(max(desired, lo), hi)
        return ModelDecision(model.name, tier.name, n, desired, reason, wanted=desired)

    if n < lo or n > hi:
        return out(n, f"{n} replicas is outside the bounds [{lo}, {hi}]; clamped")

    if window.error is not None:
        return out(n, f"holding at {n}: metrics unavailable ({window.error})")
    m = metrics
    fresh_age = _age(now, m.observed_at) if m else None
    cold = n == 0
    if not cold and (m is None or m.in_flight is None or fresh_age is None):
        return out(n, f"holding at {n}: no engine metrics for this model")
    if not cold and fresh_age is not None and fresh_age > settings.stale_seconds:
        return out(
            n,
            f"holding at {n}: metrics are {fresh_age:.0f}s old (stale after "
            f"{settings.stale_seconds:.0f}s)",
        )

    load = (m.in_flight if m else None) or 0.0
    demand = (m.demand_rate if m else None) or 0.0
    if cold:
        if load > 0 or demand > 0:
            want = max(1, math.ceil(load / target))
            return out(
                want,
                f"scale from zero: {_fmt(demand)} req/s routed to it while cold"
                if demand > 0
                else f"scale from zero: {_fmt(load)} requests in flight",
            )
        return out(0, "idle at zero: no demand")

    assert m is not None
    waiting = m.waiting or 0.0
    headroom = (
        scaling.headroom_percent
        if scaling.headroom_percent is not None
        else settings.headroom_percent
    )
    ready = n if state.ready is None else state.ready
    sized = capacity_need(
        m, target, headroom, settings, ready=ready, latest_seconds=window.latest_seconds
    )
    if sized is not None:
        need, why_need = sized.replicas, sized.reason
    else:
        need, why_need = _in_flight_need(m, target, settings)
    ttft = m.ttft_p95_seconds
    pending = ready < n
    kv_full = m.kv_cache_usage is not None and m.kv_cache_usage > settings.kv_cache_high
    busy = kv_full or waiting >= 1.0 or load >= settings.scale_down_utilisation * target * n
    breach: str | None = None
    if ttft is not None and ttft > slo:
        breach = f"TTFT p95 {ttft * 1000:.0f}ms over the SLO {slo * 1000:.0f}ms"
    elif kv_full:
        breach = f"KV cache {m.kv_cache_usage:.0%} full"

    # --- up -----------------------------------------------------------------------------
    want_up, why_up = n, ""
    if need > n:
        want_up, why_up = need, why_need
    # A breach adds a replica where more replicas help: requests queue or replicas are busy
    # (a TTFT floor of the model itself is no reason to pay for more), none still starting.
    # Sized from capacity, a queue is met by its drain term; a breach without one means the
    # replicas run slower than their service time says.
    queue_sized = sized is not None and waiting >= 1.0
    if breach and busy and not pending and not queue_sized and n + 1 > want_up:
        want_up, why_up = n + 1, breach
    if want_up > n:
        step = max(n + 1, math.ceil(n * settings.max_scale_up_factor))
        if want_up > step and step < hi:
            want_up = step
            why_up += f" (at most {settings.max_scale_up_factor:g}x in one step)"
        if want_up > hi and n >= hi:
            return out(n, f"at the maximum {hi}: {why_up}")
        since = _age(now, state.last_scale_up)
        if since is not None and since < scaling.scale_up_cooldown_seconds:
            left = scaling.scale_up_cooldown_seconds - since
            return out(n, f"holding at {n} (scale-up cooldown, {left:.0f}s left): {why_up}")
        capped = " (the maximum)" if want_up > hi else ""
        return out(want_up, f"scale up to {min(want_up, hi)}{capped}: {why_up}")
    if breach:
        why = (
            "replicas still starting"
            if pending
            else "replicas not busy"
            if not busy
            else "the queue is drained by the capacity above"
            if queue_sized
            else ""
        )
        return out(n, f"holding at {n}: {breach}" + (f", {why}" if why else ""))

    # --- down ---------------------------------------------------------------------------
    peak = m.peak_in_flight if m.peak_in_flight is not None else load
    idle = peak <= 0 and demand <= 0 and not (m.request_rate or 0) > 0
    fits = 0 if idle else fewest_replicas(peak, target, settings)
    floor = n - max(1, math.floor(n * settings.max_scale_down_fraction))
    fell = _burst_over(m, settings) if sized is not None else None
    if fell:
        # The burst is over and its queue drained: what the arrivals need bounds the step,
        # sized for the rate plus its noise (one quiet short window is no steady rate).
        kept = _release_need(m, target, headroom, settings, ready, window)
        fits, floor = min(fits, max(need, kept)), 0
    down_to = max(fits, floor, lo, need if sized is not None else 0)
    if down_to >= n:
        return out(n, f"holding at {n}: {_fmt(load)} in flight (peak {_fmt(peak)}) fits")
    if ttft is not None and ttft > slo * settings.slo_headroom:
        return out(
            n,
            f"holding at {n}: TTFT p95 {ttft * 1000:.0f}ms is within the SLO but without the "
            f"headroom to lose a replica",
        )
    if (m.waiting or 0) > 0.5:
        return out(n, f"holding at {n}: {_fmt(m.waiting or 0)} requests queued")
    since = _age(now, state.last_change)
    if since is not None and since < scaling.scale_down_cooldown_seconds:
        left = scaling.scale_down_cooldown_seconds - since
        return out(n, f"holding at {n} (scale-down cooldown, {left:.0f}s left)")
    if down_to == 0:
        return out(0, "scale to zero: no traffic and no demand over the window")
    if fell:
        noise = (
            f"; {down_to - need} more for the rate's Poisson noise "
            f"({settings.release_sigma:g} standard deviations)"
            if down_to > need
            else ""
        )
        return out(down_to, f"scale down to {down_to}: {fell}; {why_need}{noise}")
    return out(
        down_to,
        f"scale down to {down_to}: peak {_fmt(peak)} in flight fits {down_to} replicas at "
        f"{settings.scale_down_utilisation:.0%} of {target} each, with margin",
    )


def _release_need(
    m: ModelMetrics,
    target: int,
    headroom: int,
    settings: PolicySettings,
    ready: int,
    window: MetricsWindow,
) -> int:
    """Replicas a model keeps once its burst is over: the capacity sizing for its arrival
    rate plus ``release_sigma`` standard deviations of a Poisson rate over the short window
    (right after a burst, a quiet window is as likely as a busy one, and a release sized for
    a quiet one is undone at the next evaluation)."""
    rate = _arrivals(m)
    if rate is None or settings.release_sigma <= 0:
        return 0
    noisy = rate + settings.release_sigma * poisson_sd(rate, max(window.short_seconds, 1.0))
    sized = capacity_need(
        replace(m, arrival_rate=noisy, latest_arrival_rate=None),
        target,
        headroom,
        settings,
        ready=ready,
        latest_seconds=window.latest_seconds,
    )
    return sized.replicas if sized else 0


def _burst_over(m: ModelMetrics, settings: PolicySettings) -> str:
    """Why a burst is over, in words, or "" while it is not: no queue left and arrivals at
    most ``release_share`` of the burst window's busiest short-window rate."""
    rate = _arrivals(m)
    peak = m.peak_arrival_rate
    if settings.release_share <= 0 or rate is None or not peak or (m.waiting or 0.0) >= 0.5:
        return ""
    if rate > settings.release_share * peak:
        return ""
    return f"the burst is over (arrivals fell to {_fmt(rate)} req/s of a busiest {_fmt(peak)})"


def _in_flight_need(m: ModelMetrics, target: int, settings: PolicySettings) -> tuple[int, str]:
    """Replicas for the load in flight, when arrival rate or service time are not known.

    ``ceil(in_flight / target)``; a queue is sized by throughput (the running requests times
    arrivals over completions, at most ``max_growth``), and rising load is projected
    ``lookahead_seconds`` ahead.
    """
    load = m.in_flight or 0.0
    waiting = m.waiting or 0.0
    basis = load
    need = math.ceil(load / target) if load > 0 else 0
    why = f"{_fmt(load)} requests in flight need {need} replicas at {target} each"
    done, arriving = m.request_rate or 0.0, m.demand_rate
    if waiting >= 1.0 and done > 0 and arriving is not None:
        # A queue is not steady load: size for the running requests scaled by how much
        # faster requests arrive than they finish (what runs once capacity catches up).
        growth = min(settings.max_growth, max(1.0, arriving / done))
        basis = max(0.0, load - waiting) * growth
        need = math.ceil(basis / target)
        why = (
            f"{_fmt(load - waiting)} running, {_fmt(waiting)} queued, arrivals at "
            f"{growth:.1f}x completions: need {need} replicas at {target} each"
        )
    rise = (m.in_flight_trend or 0.0) * settings.lookahead_seconds
    if rise >= settings.min_rise * target and basis > 0:
        # Rising load (by more than noise): size for where it will be once a new replica
        # is up.
        ahead = math.ceil((basis + rise) / target)
        if ahead > need:
            need = ahead
            trend = rise / settings.lookahead_seconds
            why = (
                f"{_fmt(load)} requests in flight, rising {_fmt(trend * 60)}/min, need {need} "
                f"replicas at {target} each within {settings.lookahead_seconds:.0f}s"
            )
    return need, why


def bridge_takers(spec: ModelFleetSpec, measured: Mapping[str, str]) -> dict[str, str]:
    """The measured spill takers (``MetricsWindow.spill_takers``) that can bridge: those of a
    fleet model whose tier declares a shorter ``replicaStartSeconds`` than their first
    choice's. A taker that starts no sooner than the first choice bridges nothing: its new
    replicas would serve no sooner than the first choice's own, and only cost."""
    tiers = {t.name: t for t in spec.tiers}
    start = {m.name: tiers[m.tier].autoscaling.replica_start_seconds for m in spec.fleet_models()}
    out = {}
    for first, taker in measured.items():
        a, b = start.get(first), start.get(taker)
        if a is not None and b is not None and b < a:
            out[first] = taker
    return out


def bridge_spill(
    spec: ModelFleetSpec,
    states: Mapping[str, ModelState],
    window: MetricsWindow,
    decisions: list[ModelDecision],
    takers: Mapping[str, str],
    now: datetime,
    settings: PolicySettings,
) -> list[ModelDecision]:
    """The decisions with each spill taker sized to bridge its first choices' replica starts.

    For a model ``f`` whose ``takers[f]`` is another model of the fleet: while ``f`` has
    replicas starting (its count in force, or the count just decided, above its ready
    replicas) and its arrival rate (the latest window's at a step, :func:`stepped_rate`)
    exceeds what the ready replicas carry at the target, that excess times ``f``'s service
    time is the requests in flight the ingress will spill while ``f``'s replicas start. The
    taker gets the replicas that hold its own arrivals' load (the requests routed to it
    first: those spilled to it are in the excess already) and ``spill_bridge`` times the
    excess of every model it takes from, at its own target, with the square-root margin
    (:func:`staffed`). The excess is counted in ``f``'s slot-seconds: the taker's service
    time measured at a light load understates its time at a full batch.

    Never fewer than the taker's own decision; the model's bounds and the scale-up cooldown
    apply as to any scale-up, not ``max_scale_up_factor``: the bridge is sized in one step
    from what the first choices measure, and a taker of one replica would otherwise take
    two steps (two cold starts) to get there. Spilled requests leave once ``f``'s
    replicas serve; the scale-down rule releases the taker's replicas as its load falls.
    """
    tiers = {t.name: t for t in spec.tiers}
    models = {m.name: m for m in spec.fleet_models()}
    by_model = {d.model: d for d in decisions}
    extra: dict[str, float] = {}
    sources: dict[str, list[str]] = {}
    for first, taker in takers.items():
        if first == taker or first not in by_model or taker not in by_model:
            continue
        m = window.models.get(first)
        state = states.get(first)
        if m is None or state is None:
            continue
        rate = _arrivals(m)
        service = m.service_seconds
        if rate is None or service is None or service <= 0:
            continue
        stepped = stepped_rate(
            rate, m.latest_arrival_rate, window.latest_seconds, settings.step_sigma
        )
        rate = stepped if stepped is not None else rate
        ready = state.replicas if state.ready is None else state.ready
        starting = max(state.replicas, by_model[first].desired) > ready
        target = tiers[models[first].tier].autoscaling.target_ongoing_requests
        excess = rate - ready * target / service
        if not starting or excess <= 0:
            continue
        extra[taker] = extra.get(taker, 0.0) + excess * service
        sources.setdefault(taker, []).append(f"{first} {_fmt(excess)} req/s")
    if not extra:
        return decisions
    out = []
    for d in decisions:
        if d.model not in extra:
            out.append(d)
            continue
        model, tier = models[d.model], tiers[d.tier]
        span = replica_range(model, tier)
        target = tier.autoscaling.target_ongoing_requests
        m = window.models.get(d.model)
        own = 0.0  # its own arrivals' load (spilled requests count for their first choice)
        if m is not None:
            rate, service = _arrivals(m), m.service_seconds
            if rate is not None and service:
                own = rate * service
        load = own + settings.spill_bridge * extra[d.model]
        want = min(staffed(load, target, settings.sqrt_margin), span.max)
        n = d.current
        if want <= d.desired:
            out.append(d)
            continue
        why = (
            f"spillover bridge: {_fmt(extra[d.model])} in flight beyond the ready replicas of "
            f"{', '.join(sources[d.model])} while their replicas start"
        )
        if want <= n:  # no scale-down below the bridge while it is needed
            out.append(replace(d, desired=want, wanted=want, reason=f"holding at {want}: {why}"))
            continue
        state = states.get(d.model)
        since = _age(now, state.last_scale_up if state else None)
        if since is not None and since < tier.autoscaling.scale_up_cooldown_seconds:
            out.append(d)
            continue
        out.append(replace(d, desired=want, wanted=want, reason=f"scale up to {want}: {why}"))
    return out


def _price(spec: ModelFleetSpec) -> dict[str, Decimal]:
    tiers = {t.name: Decimal(t.cost_per_replica_hour) for t in spec.tiers}
    return {m.name: tiers[m.tier] for m in spec.fleet_models()}


def external_spend(spec: ModelFleetSpec, metrics: Mapping[str, ModelMetrics]) -> Decimal:
    """USD per hour the fleet's models served outside it cost now (their answers' token
    bills over the rate window): the fleet budget counts it beside the replicas."""
    total = Decimal(0)
    for m in spec.external_models():
        seen = metrics.get(m.name)
        if seen is not None and seen.spend_per_hour:
            total += Decimal(str(round(seen.spend_per_hour, 6)))
    return total


def cost_of(spec: ModelFleetSpec, replicas: Mapping[str, int]) -> Decimal:
    """Cost per hour of ``replicas`` (models absent from it count as zero)."""
    price = _price(spec)
    return sum((price[k] * v for k, v in replicas.items() if k in price), Decimal(0))


def apply_budget(
    spec: ModelFleetSpec,
    wanted: list[ModelDecision],
    metrics: Mapping[str, ModelMetrics],
    budget: Decimal | None,
    external: Decimal = Decimal(0),
) -> tuple[list[ModelDecision], bool, str]:
    """Cap the wanted replicas at the budget: (decisions, whether it binds, why in words).
    ``external`` is what the models served outside the fleet cost per hour now: it counts
    against the budget, and no replica can take it back."""
    if budget is None:
        return wanted, False, ""
    price = _price(spec)
    tiers = {t.name: t for t in spec.tiers}
    models = {m.name: m for m in spec.models}
    desired = {d.model: d.desired for d in wanted}
    cost = cost_of(spec, desired) + external
    if cost <= budget:
        return wanted, False, ""
    floors = {
        d.model: replica_range(models[d.model], tiers[d.tier]).min for d in wanted
    }  # the minimums are not negotiable

    def load(name: str) -> float:
        m = metrics.get(name)
        return (m.in_flight or 0.0) if m else 0.0

    while cost > budget:
        candidates = [k for k, v in desired.items() if v > floors[k] and price[k] > 0]
        if not candidates:
            break

        def pressure(k: str) -> tuple[float, Decimal, str]:
            target = tiers[models[k].tier].autoscaling.target_ongoing_requests
            left = desired[k] - 1
            util = load(k) / (target * left) if left > 0 else math.inf
            return (util, -price[k], k)

        victim = min(candidates, key=pressure)
        desired[victim] -= 1
        cost -= price[victim]
    out = []
    for d in wanted:
        if desired[d.model] < d.desired:
            reason = (
                f"budget: capped at {desired[d.model]} (load and SLO asked for {d.desired}; "
                f"{d.reason})"
            )
            out.append(replace(d, desired=desired[d.model], reason=reason, budget_limited=True))
        else:
            out.append(d)
    if cost > budget:
        why = (
            f"budget ${budget}/h is below the cost of the minimum replicas (${cost}/h); "
            "holding at the minimums"
        )
    else:
        losers = ", ".join(
            f"{d.model} {d.wanted}->{desired[d.model]}" for d in out if d.budget_limited
        )
        why = f"budget ${budget}/h binds: capacity taken from {losers}"
    return out, True, why


def effective_alpha(
    policy_alpha: Decimal | None,
    min_alpha: Decimal,
    previous: Decimal | None,
    wanted_cost: Decimal,
    budget: Decimal | None,
    binding: bool,
    settings: PolicySettings,
) -> tuple[Decimal | None, str]:
    """Router quality weight to use, and why: lowered while the budget binds."""
    if policy_alpha is None or budget is None:
        return None, ""
    floor = min(min_alpha, policy_alpha)
    current = policy_alpha if previous is None else min(max(previous, floor), policy_alpha)
    if binding and wanted_cost > 0:
        scaled = (policy_alpha * budget / wanted_cost).quantize(Decimal("0.01"), ROUND_DOWN)
        new = max(floor, min(current, scaled))
        if new < policy_alpha:
            return new, (
                f"router alpha lowered from {policy_alpha} to {new} (floor {floor}) to send more "
                "queries to cheaper models"
            )
        return None, ""
    if current >= policy_alpha:
        return None, ""
    if wanted_cost <= budget * settings.alpha_recovery_share:
        new = min(policy_alpha, current + settings.alpha_step)
        if new >= policy_alpha:
            return None, f"router alpha restored to {policy_alpha}: the fleet fits the budget"
        return new, f"router alpha recovering to {new} (policy {policy_alpha})"
    return current, f"router alpha held at {current}: the fleet is close to its budget"


def decide(
    spec: ModelFleetSpec,
    states: Mapping[str, ModelState],
    window: MetricsWindow,
    now: datetime,
    *,
    settings: PolicySettings | None = None,
    budget: Decimal | None = None,
    policy_alpha: Decimal | None = None,
    previous_alpha: Decimal | None = None,
    spill_takers: Mapping[str, str] | None = None,
) -> FleetDecision:
    """Desired replicas of every model of the fleet, the budget's verdict and alpha.

    ``states`` holds each model's replicas in force (a model missing from it starts at its
    :func:`~shoal.contract.replica_range` initial count). ``budget`` overrides ``spec.budget``
    when the spec has none (the operator's default budget). ``policy_alpha`` is the routing
    policy's own alpha; ``previous_alpha`` the effective alpha in force (None: the policy's).
    ``spill_takers`` names, per model, the model its spilled requests usually go to (the
    ingress's spillover); with ``settings.spill_bridge`` the takers are sized to bridge
    their first choices' replica starts (:func:`bridge_spill`).
    """
    settings = settings or PolicySettings()
    tiers = {t.name: t for t in spec.tiers}
    decisions = []
    for model in spec.fleet_models():  # a model served outside the fleet has no replicas
        tier = tiers[model.tier]
        state = states.get(model.name) or ModelState(replicas=replica_range(model, tier).initial)
        decisions.append(
            decide_model(model, tier, state, window.models.get(model.name), window, now, settings)
        )
    if settings.spill_bridge > 0 and spill_takers and window.error is None:
        decisions = bridge_spill(spec, states, window, decisions, spill_takers, now, settings)
    cap = Decimal(spec.budget.max_cost_per_hour) if spec.budget else budget
    outside = external_spend(spec, window.models)
    wanted_cost = cost_of(spec, {d.model: d.desired for d in decisions}) + outside
    capped, binding, why = apply_budget(spec, decisions, window.models, cap, outside)
    cost = cost_of(spec, {d.model: d.desired for d in capped}) + outside
    min_alpha = Decimal(spec.budget.min_alpha) if spec.budget else Decimal("0.3")
    alpha, alpha_why = effective_alpha(
        policy_alpha, min_alpha, previous_alpha, wanted_cost, cap, binding, settings
    )
    parts = [f"${cost:.2f}/h" + (f" of a ${cap:.2f}/h budget" if cap is not None else "")]
    if outside > 0:
        parts[0] += f" (${outside:.2f}/h of it on models served outside the fleet)"
    parts += [p for p in (why, alpha_why) if p]
    return FleetDecision(
        models=capped,
        cost_per_hour=cost,
        wanted_cost_per_hour=wanted_cost,
        budget_per_hour=cap,
        budget_binding=binding,
        effective_alpha=alpha,
        summary="; ".join(parts),
    )
