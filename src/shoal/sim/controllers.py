"""Who sets the replica counts in a simulation: Shoal's policy and the baselines.

- :class:`ShoalController`: :func:`shoal.autoscaling.policy.decide`, the very code the
  operator runs, fed with a :class:`~shoal.autoscaling.types.MetricsWindow` built from the
  simulator's scrapes over the same windows the operator queries Prometheus with
  (:func:`shoal.autoscaling.prometheus.windows_for`); it also sets the router's alpha.
- :class:`QueueThresholdController`: the per-model rule of KEDA queue-length setups: one
  more replica when requests queue, one fewer once the queue has stayed empty and the
  replicas are under half busy, with the tier's cooldowns.
- :class:`ScheduleController`: replays a replica schedule (static peak provisioning, or the
  hindsight-optimal schedule, which starts replicas one cold start ahead of need).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shoal.api.v1alpha1 import ModelFleetSpec
from shoal.autoscaling.policy import PolicySettings, decide
from shoal.autoscaling.prometheus import Windows, rate_trend, trend, windows_for
from shoal.autoscaling.types import MetricsWindow, ModelMetrics, ModelState
from shoal.contract import replica_range
from shoal.sim.simulator import Scrape, Simulator, replicas_at

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def at(t: float) -> datetime:
    """Virtual time as the datetime the policy reads."""
    return EPOCH + timedelta(seconds=t)


def observe(sim: Simulator, now: float, windows: Windows) -> MetricsWindow:
    """The metrics window Prometheus would answer for every model at ``now``."""
    rec = sim.recorder
    models = {}
    for name in sim.pools:
        short = rec.window(name, now, windows.short)
        latest = rec.window(name, now, windows.latest)
        long = rec.window(name, now, windows.long)
        engine = next((s for s in reversed(rec.scrapes[name]) if s.engine), None)
        in_flight = _mean(short, "in_flight")
        recent = rec.rate(name, now, windows.short, "routed")
        before = rec.rate(name, now, windows.short, "routed", offset=windows.short)
        earlier = [
            rec.rate(name, now, windows.short, "routed", offset=k * windows.short) for k in (2, 3)
        ]
        models[name] = ModelMetrics(
            in_flight=in_flight,
            peak_in_flight=_peak_of_averages(long, windows.short),
            in_flight_trend=trend(in_flight, recent, before, windows.short),
            waiting=_mean(short, "waiting"),
            request_rate=rec.rate(name, now, windows.rate, "answered"),
            demand_rate=rec.rate(name, now, windows.rate, "routed"),
            ttft_p95_seconds=rec.ttft_quantile(name, now, windows.rate, 0.95),
            kv_cache_usage=max((s.kv_cache for s in short if s.engine), default=None),
            observed_at=at(engine.t) if engine else None,
            arrival_rate=recent,
            arrival_trend=rate_trend([recent, before, *earlier], windows.short),
            peak_arrival_rate=_peak_rate(rec.window(name, now, windows.burst), windows.short),
            service_seconds=rec.mean_service(name, now, windows.rate),
            latest_arrival_rate=rec.rate(name, now, windows.latest, "routed"),
            latest_waiting=_mean(latest, "waiting"),
        )
    for name, outside in sim.external.items():  # no replicas: only their bills count
        models[name] = ModelMetrics(spend_per_hour=outside.spend_per_hour(now, windows.rate))
    return MetricsWindow(
        collected_at=at(now),
        models=models,
        short_seconds=windows.short,
        latest_seconds=windows.latest,
    )


def _mean(scrapes: list[Scrape], key: str) -> float | None:
    """Mean of one scraped gauge over ``scrapes`` (PromQL's ``avg_over_time``); None without
    scrapes."""
    return sum(getattr(s, key) for s in scrapes) / len(scrapes) if scrapes else None


def _peak_rate(scrapes: list[Scrape], width: float) -> float | None:
    """Highest rate of routed requests over any ``width`` seconds (PromQL's
    ``max_over_time(rate(...[width])[burst])``)."""
    best: float | None = None
    lo = 0
    for s in scrapes:
        while scrapes[lo].t < s.t - width - 1e-9:
            lo += 1
        first = scrapes[lo]
        if s.t > first.t:
            r = (s.routed - first.routed) / (s.t - first.t)
            best = r if best is None else max(best, r)
    return best


def _peak_of_averages(scrapes: list[Scrape], width: float) -> float | None:
    """Highest average of in-flight requests over any ``width`` seconds (PromQL's
    ``max_over_time(avg_over_time(...[width])[long])``)."""
    if not scrapes:
        return None
    best, total, lo = 0.0, 0.0, 0
    for hi, s in enumerate(scrapes):
        total += s.in_flight
        while scrapes[lo].t <= s.t - width:
            total -= scrapes[lo].in_flight
            lo += 1
        best = max(best, total / (hi - lo + 1))
    return best


@dataclass
class ShoalController:
    """Shoal's autoscaling policy, as the operator runs it."""

    spec: ModelFleetSpec
    start: dict[str, int]
    policy_alpha: float
    interval_seconds: float = 15.0
    settings: PolicySettings = field(default_factory=PolicySettings)
    name: str = "shoal"
    states: dict[str, ModelState] = field(default_factory=dict)
    effective_alpha: Decimal | None = None
    #: Per model, the model its spilled requests usually go to (spillover's bridge, with
    #: ``settings.spill_bridge``; None: no bridge).
    spill_takers: dict[str, str] | None = None
    #: Every change: (time, model, from, to, reason).
    log: list[tuple[float, str, int, int, str]] = field(default_factory=list)

    def initial(self) -> dict[str, int]:
        # The starting counts, held (no metrics yet) but within bounds and budget.
        states = {m: ModelState(replicas=n) for m, n in self.start.items()}
        nothing = MetricsWindow(collected_at=at(0), error="no metrics yet")
        decision = decide(self.spec, states, nothing, at(0), settings=self.settings)
        self.states = {d.model: ModelState(replicas=d.desired) for d in decision.models}
        return {m: s.replicas for m, s in self.states.items()}

    def evaluate(self, now: float, sim: Simulator) -> tuple[dict[str, int], float | None]:
        window = observe(sim, now, windows_for(self.spec, self.interval_seconds))
        states = {
            m: ModelState(
                replicas=s.replicas,
                ready=len(sim.pools[m].serving),
                last_scale_up=s.last_scale_up,
                last_change=s.last_change,
            )
            for m, s in self.states.items()
        }
        decision = decide(
            self.spec,
            states,
            window,
            at(now),
            settings=self.settings,
            policy_alpha=Decimal(str(self.policy_alpha)),
            previous_alpha=self.effective_alpha,
            spill_takers=self.spill_takers,
        )
        for d in decision.models:
            s = states[d.model]
            if d.desired != d.current:
                self.log.append((now, d.model, d.current, d.desired, d.reason))
                self.states[d.model] = ModelState(
                    replicas=d.desired,
                    last_scale_up=at(now) if d.desired > d.current else s.last_scale_up,
                    last_change=at(now),
                )
        self.effective_alpha = decision.effective_alpha
        alpha = (
            float(decision.effective_alpha)
            if decision.effective_alpha is not None
            else self.policy_alpha
        )
        return {m: s.replicas for m, s in self.states.items()}, alpha


@dataclass
class QueueThresholdController:
    """Per model: +1 replica while requests queue, -1 once idle enough (KEDA-style)."""

    spec: ModelFleetSpec
    start: dict[str, int]
    interval_seconds: float = 15.0
    #: Requests waiting (averaged over the short window) per replica that trigger +1.
    queue_per_replica: float = 1.0
    #: Scale down only while fewer than this share of the batch slots are busy.
    down_utilisation: float = 0.5
    name: str = "queue-threshold"
    replicas: dict[str, int] = field(default_factory=dict)
    last_up: dict[str, float] = field(default_factory=dict)
    last_change: dict[str, float] = field(default_factory=dict)

    def initial(self) -> dict[str, int]:
        self.replicas = dict(self.start)
        return dict(self.start)

    def evaluate(self, now: float, sim: Simulator) -> tuple[dict[str, int], float | None]:
        windows = windows_for(self.spec, self.interval_seconds)
        tiers = {t.name: t for t in self.spec.tiers}
        for model in self.spec.fleet_models():
            tier = tiers[model.tier]
            span = replica_range(model, tier)
            lo, hi = span.min, span.max
            n = self.replicas[model.name]
            pool = sim.pools[model.name]
            short = sim.recorder.window(model.name, now, windows.short)
            long = sim.recorder.window(model.name, now, windows.long)
            waiting = _mean(short, "waiting") or 0.0
            since_up = now - self.last_up.get(model.name, -1e9)
            since_change = now - self.last_change.get(model.name, -1e9)
            if waiting > self.queue_per_replica * max(n, 1) or (n == 0 and waiting > 0):
                if n < hi and (since_up >= tier.autoscaling.scale_up_cooldown_seconds or n == 0):
                    self.replicas[model.name] = n + 1
                    self.last_up[model.name] = self.last_change[model.name] = now
                continue
            busy = max((s.in_flight for s in long), default=0.0)
            quiet = all(s.waiting == 0 for s in long)
            slots = max(n, 1) * pool.latency.max_batch
            if (
                n > lo
                and quiet
                and busy < self.down_utilisation * slots
                and since_change >= tier.autoscaling.scale_down_cooldown_seconds
            ):
                self.replicas[model.name] = n - 1
                self.last_change[model.name] = now
        return dict(self.replicas), None


@dataclass
class ScheduleController:
    """Replays a schedule; ``lead`` starts replicas that many seconds before they are due."""

    name: str
    schedule: Mapping[str, list[tuple[float, int]]]
    lead: Mapping[str, float] = field(default_factory=dict)
    interval_seconds: float = 5.0

    def initial(self) -> dict[str, int]:
        return {m: replicas_at(s, 0.0) for m, s in self.schedule.items()}

    def evaluate(self, now: float, sim: Simulator) -> tuple[dict[str, int], float | None]:
        # Keep what is due now; start whatever is due before the next look plus a cold start.
        horizon = self.interval_seconds
        return {
            m: max_between(s, now, now + self.lead.get(m, 0.0) + horizon)
            for m, s in self.schedule.items()
        }, None


def max_between(timeline: list[tuple[float, int]], a: float, b: float) -> int:
    """Most replicas a timeline asks for at any time in ``[a, b]``."""
    return max([replicas_at(timeline, a)] + [n for t, n in timeline if a < t <= b])
