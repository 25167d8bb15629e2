"""The simulation study: Shoal's policy against three baselines on one scenario.

:func:`run_study` generates the scenario's trace for a seed, fits the router, computes the
hindsight baselines (:mod:`shoal.sim.optimal`), replays the trace under each controller and
summarises: SLO attainment (share of requests whose first token came within their tier's
TTFT objective), cost, and the ratios the issue asks for (``cost_vs_static``,
``cost_vs_optimal``: Shoal's cost over the baseline's).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.autoscaling.policy import PolicySettings
from shoal.contract import replica_range
from shoal.contract.cost import reference_price
from shoal.routing.spillover import SpillPolicy
from shoal.sim.cascade import CascadeLoad, CascadeSpec
from shoal.sim.controllers import QueueThresholdController, ScheduleController, ShoalController
from shoal.sim.engine import Request
from shoal.sim.external import external_endpoints
from shoal.sim.optimal import PoolSpec, capacity_curve, hindsight_schedule, static_schedule
from shoal.sim.scenarios import ALL_SCENARIOS, FRONTIER_FIRST_TOKEN_SECONDS, Scenario
from shoal.sim.simulator import Controller, Routing, SimResult, Simulator, replicas_at
from shoal.sim.workload import RoutingTable, fit_workload_router, generate_trace, read_trace

#: What the issue asks of Shoal's policy.
TARGETS = {"slo_attainment": 0.99, "cost_vs_static": 0.70, "cost_vs_optimal": 1.20}


@dataclass
class Study:
    """Everything one study produced."""

    scenario: Scenario
    seed: int
    trace: list[Request]
    results: dict[str, SimResult]
    seconds: float
    #: The JSONL trace replayed instead of the scenario's synthetic one, if any.
    trace_file: Path | None = None
    #: What the fleet's cascade added to the trace (None: no cascade).
    cascade: CascadeLoad | None = None
    #: Spillover as the ingress applies it (None: off).
    spillover: SpillPolicy | None = None
    #: Shoal's autoscaling settings, and the spill takers its bridge sized (None: no bridge).
    settings: PolicySettings | None = None
    spill_takers: dict[str, str] | None = None

    def summary(self) -> dict[str, Any]:
        """The JSON object ``shoal sim --json`` prints."""
        shoal = self.results["shoal"]
        static = self.results["static-peak"]
        optimal = self.results["optimal"]
        out: dict[str, Any] = {
            "scenario": self.scenario.name,
            "trace": str(self.trace_file) if self.trace_file else None,
            "seed": self.seed,
            "requests": len(self.trace),
            "hours": round(self.scenario.duration / 3600.0, 2),
            "slo_attainment": round(shoal.slo_attainment, 4),
            "cost_vs_static": round(shoal.cost / static.cost, 3),
            "cost_vs_optimal": round(shoal.cost / optimal.cost, 3),
            "spillover": None
            if self.spillover is None
            else {
                "max_quality_drop": self.spillover.max_quality_drop,
                "slo_share": self.spillover.slo_share,
                "bridge": self.settings.spill_bridge if self.settings else 0.0,
                "takers": self.spill_takers,
            },
            "spilled_share": round(shoal.spilled_share, 4),
            "quality_lost_per_spilled": round(
                shoal.quality_lost / max(1, sum(shoal.spilled.values())), 4
            ),
            "quality_lost_per_request": round(shoal.quality_lost_per_request, 5),
        }
        if self.cascade is not None:
            out["cascade"] = self.cascade.as_dict()
        out["targets_met"] = {
            "slo_attainment": out["slo_attainment"] >= TARGETS["slo_attainment"],
            "cost_vs_static": out["cost_vs_static"] <= TARGETS["cost_vs_static"],
            "cost_vs_optimal": out["cost_vs_optimal"] <= TARGETS["cost_vs_optimal"],
        }
        out["policies"] = {name: describe(r) for name, r in self.results.items()}
        peaks, best = out["policies"]["shoal"]["peak_replicas"], optimal_peaks(optimal)
        #: Shoal's highest count over what the issue allows: 1.5x the optimal peak + 1.
        out["peak_excess"] = max(peaks[m] - (1.5 * best[m] + 1) for m in best)
        out["simulated_in_seconds"] = round(self.seconds, 1)
        return out


def describe(r: SimResult) -> dict[str, Any]:
    """Figures of one run."""
    ttfts = sorted(s[2] for s in r.served)

    def q(p: float) -> float:
        return round(1000 * ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))], 1) if ttfts else 0.0

    changes = sum(max(0, len(t) - 2) for t in r.timeline.values())
    out: dict[str, Any] = {
        "slo_attainment": round(r.slo_attainment, 4),
        "cost_usd": round(r.cost, 2),
        "mean_cost_per_hour": round(r.cost / (r.duration / 3600.0), 2),
        "ttft_p50_ms": q(0.50),
        "ttft_p95_ms": q(0.95),
        "ttft_p99_ms": q(0.99),
        "replica_changes": changes,
        "peak_replicas": {m: max(n for _, n in t) for m, t in r.timeline.items()},
        "min_alpha": min(a for _, a in r.alpha),
        "unserved": r.unserved,
        "spilled_share": round(r.spilled_share, 4),
        "quality_lost_per_request": round(r.quality_lost_per_request, 5),
        "spilled": {f"{a}->{b}": n for (a, b), n in sorted(r.spilled.items())},
    }
    if r.external_cost_by_model:
        out["external_cost_usd"] = {m: round(c, 2) for m, c in r.external_cost_by_model.items()}
    savings = r.savings
    if savings is not None:
        out["reference_cost_usd"] = round(savings.reference_usd, 2)
        pct = savings.saved_percent
        out["saved_percent"] = None if pct is None else round(pct, 1)
    return out


def pool_specs(scenario: Scenario) -> list[PoolSpec]:
    tiers = {t.name: t for t in scenario.spec.tiers}
    return [
        PoolSpec(
            name=m.name,
            tier=m.tier,
            latency=scenario.engines[m.tier],
            cold_start_seconds=scenario.cold_start[m.tier],
            price_per_hour=float(tiers[m.tier].cost_per_replica_hour),
            slo_seconds=tiers[m.tier].slo.ttft_p95_milliseconds / 1000.0,
        )
        for m in scenario.spec.fleet_models()
    ]


def run_study(
    scenario: Scenario,
    seed: int = 0,
    *,
    trace_file: Path | None = None,
    progress: Callable[[str], None] | None = None,
    cascade: CascadeSpec | None = None,
    spillover: SpillPolicy | None = None,
    settings: PolicySettings | None = None,
    interval_seconds: float | None = None,
) -> Study:
    """Run every controller on the scenario's trace (see the module docstring); with
    ``cascade``, the trace of every attempt the fleet's cascade makes
    (:mod:`shoal.sim.cascade`), so that every plan sizes for it; with ``spillover``, the
    fleet's ingress spills over (every controller alike: it is the ingress's rule, not the
    autoscaler's). ``settings`` are Shoal's autoscaling policy's (the operator's
    environment; default: the policy's own), ``interval_seconds`` the autoscaler's
    evaluation interval (default: the scenario's). With spillover and
    ``settings.spill_bridge``, Shoal's autoscaler sizes each model's usual spill taker to
    bridge its replica starts (:func:`shoal.autoscaling.policy.bridge_spill`)."""
    say = progress or (lambda _: None)
    started = time.perf_counter()
    settings = settings or PolicySettings()
    if interval_seconds is not None:
        scenario = dataclasses.replace(scenario, interval_seconds=interval_seconds)
    models = list(scenario.spec.fleet_models())
    cost_per_query = {m.name: 0.0004 if m.tier == "large" else 0.0001 for m in models}
    outside = external_endpoints(scenario.spec, FRONTIER_FIRST_TOKEN_SECONDS)
    for e in outside:  # the router's calibration prices it per token, at a typical query
        cost_per_query[e.name] = e.price.cost(0.0, 544, 320)
    table = RoutingTable.build(
        fit_workload_router(scenario.topics, cost_per_query, scenario.policy_alpha, seed),
        scenario.topics,
    )
    trace = (
        read_trace(trace_file)
        if trace_file
        else generate_trace(scenario.topics, scenario.duration, seed)
    )
    say(f"{scenario.name}: {len(trace)} requests over {scenario.duration / 3600:.1f} h")
    routing: Routing = table
    load = None
    if cascade is not None:
        from shoal.sim.cascade import CascadeRouting, answer_time, cascade_trace

        timers = {p.name: answer_time(p.latency) for p in pool_specs(scenario)}
        trace, load = cascade_trace(trace, cascade, table, timers, alpha=scenario.policy_alpha)
        routing = CascadeRouting(table)
        say(f"{scenario.name}: cascade: {load.attempts} attempts, {load.escalated} escalated")

    # Hindsight: where each request goes at the policy's alpha, and what that needs.
    arrivals: dict[str, list[float]] = {m.name: [] for m in models}
    mixes: dict[str, list[tuple[int, int]]] = {m.name: [] for m in models}
    for req in trace:
        first = routing.ranked(req.topic, req.prompt, scenario.policy_alpha)[0]
        if first not in arrivals:  # served outside the fleet: no replicas to plan
            continue
        arrivals[first].append(req.arrival)
        mixes[first].append((req.prompt_tokens, req.output_tokens))
    tiers = {t.name: t for t in scenario.spec.tiers}
    specs = {p.name: p for p in pool_specs(scenario)}
    optimal: dict[str, list[tuple[float, int]]] = {}
    for m in models:
        span = replica_range(m, tiers[m.tier])
        lo, hi = span.min, span.max
        mix = mixes[m.name] or [(256, 128)]
        sample = random.Random(seed).sample(mix, min(len(mix), 1500))
        needed = _rough_peak(arrivals[m.name], scenario.duration)
        curve = capacity_curve(specs[m.name], min(hi, needed), sample)
        optimal[m.name] = hindsight_schedule(arrivals[m.name], curve, scenario.duration, lo, hi)
    say(f"{scenario.name}: baselines computed ({time.perf_counter() - started:.1f}s)")
    start = {m: replicas_at(s, 0.0) for m, s in optimal.items()}
    lead = {m.name: scenario.cold_start[m.tier] for m in models}
    takers = (
        spill_takers(routing, trace, scenario.policy_alpha, spillover.max_quality_drop, lead)
        if spillover is not None and spillover.enabled and settings.spill_bridge > 0
        else None
    )
    controllers: list[Controller] = [
        ShoalController(
            scenario.spec,
            start,
            scenario.policy_alpha,
            scenario.interval_seconds,
            settings=settings,
            spill_takers=takers,
        ),
        QueueThresholdController(scenario.spec, start, scenario.interval_seconds),
        ScheduleController("static-peak", static_schedule(optimal)),
        ScheduleController("optimal", optimal, lead=lead),
    ]
    results = {}
    for ctl in controllers:
        sim = Simulator(
            [p.make() for p in specs.values()],
            trace,
            routing,
            ctl,
            duration=scenario.duration,
            alpha=scenario.policy_alpha,
            scrape_seconds=scenario.scrape_seconds,
            external=external_endpoints(scenario.spec, FRONTIER_FIRST_TOKEN_SECONDS),
            reference=reference_price(scenario.spec),
            spillover=spillover,
        )
        results[ctl.name] = sim.run()
        say(f"{scenario.name}: {ctl.name} done ({time.perf_counter() - started:.1f}s)")
    return Study(
        scenario,
        seed,
        trace,
        results,
        time.perf_counter() - started,
        trace_file,
        cascade=load,
        spillover=spillover,
        settings=settings,
        spill_takers=takers,
    )


def spill_takers(
    routing: Routing,
    trace: Sequence[Request],
    alpha: float,
    max_quality_drop: float,
    start_seconds: Mapping[str, float],
) -> dict[str, str]:
    """Per model of the fleet, the model that bridges its replica starts with spillover.

    For each request of the trace, among the other models of the fleet (``start_seconds``:
    each one's cold start) whose quality for the prompt is at most ``max_quality_drop``
    below its first choice's (where the spillover rule may send it), the one that starts
    fastest (the router's order on a tie), if it starts faster than the first choice; per
    first choice, the most frequent one. A taker that starts no faster than the first choice
    bridges nothing: its replicas would serve no sooner than the first choice's own."""
    quality_of = getattr(routing, "quality", None)
    seen: dict[str, Counter[str]] = {}
    cache: dict[tuple[str, int], tuple[str, str | None]] = {}
    for req in trace:
        key = (req.topic, req.prompt)
        if key not in cache:
            ranked = routing.ranked(req.topic, req.prompt, alpha)
            quality = quality_of(req.topic, req.prompt) if quality_of is not None else None
            first, taker = ranked[0], None
            if quality is not None and first in quality and first in start_seconds:
                allowed = [
                    m
                    for m in ranked[1:]
                    if m in start_seconds
                    and m in quality
                    and quality[first] - quality[m] <= max_quality_drop + 1e-9
                    and start_seconds[m] < start_seconds[first]
                ]
                if allowed:
                    taker = min(allowed, key=lambda m: start_seconds[m])
            cache[key] = (first, taker)
        first, taker = cache[key]
        if taker is not None:
            seen.setdefault(first, Counter())[taker] += 1
    return {first: c.most_common(1)[0][0] for first, c in sorted(seen.items())}


def optimal_peaks(r: SimResult) -> dict[str, int]:
    """Each model's peak count in a run."""
    return {m: max(n for _, n in t) for m, t in r.timeline.items()}


def _rough_peak(arrivals: list[float], duration: float) -> int:
    """An upper bound on the replicas the capacity curve must cover (one per req/s)."""
    per_minute = [0] * (int(duration // 60) + 1)
    for t in arrivals:
        per_minute[int(t // 60)] += 1
    return max(2, int(max(per_minute, default=0) / 60) + 2)


def scenario_named(name: str) -> Scenario:
    """A scenario by name (KeyError with the known names otherwise)."""
    try:
        return ALL_SCENARIOS[name]()
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(ALL_SCENARIOS)}") from None


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst case over seeds of one scenario's summaries (see :func:`run_many`)."""
    keys = ("slo_attainment", "cost_vs_static", "cost_vs_optimal")
    out: dict[str, Any] = {"seeds": [s["seed"] for s in summaries]}
    for k in keys:
        vals = [float(s[k]) for s in summaries]
        worst = min(vals) if k == "slo_attainment" else max(vals)
        out[k] = {"mean": round(sum(vals) / len(vals), 4), "worst": worst}
    policies = [s["policies"] for s in summaries]
    out["optimal_slo_attainment"] = min(p["optimal"]["slo_attainment"] for p in policies)
    out["queue_threshold"] = {
        "slo_attainment": round(
            sum(p["queue-threshold"]["slo_attainment"] for p in policies) / len(policies), 4
        ),
        "cost_vs_optimal": round(
            sum(p["queue-threshold"]["cost_usd"] / p["optimal"]["cost_usd"] for p in policies)
            / len(policies),
            3,
        ),
    }
    out["peak_excess"] = max(s["peak_excess"] for s in summaries)
    for k in ("spilled_share", "quality_lost_per_spilled", "quality_lost_per_request"):
        out[k] = round(sum(float(s.get(k, 0.0)) for s in summaries) / len(summaries), 5)
    out["targets_met"] = {
        "slo_attainment": out["slo_attainment"]["mean"] >= TARGETS["slo_attainment"],
        "cost_vs_static": out["cost_vs_static"]["mean"] <= TARGETS["cost_vs_static"],
        "cost_vs_optimal": out["cost_vs_optimal"]["mean"] <= TARGETS["cost_vs_optimal"],
        "peak": out["peak_excess"] <= 0,
    }
    return out


def run_many(
    names: list[str],
    seeds: list[int],
    progress: Callable[[str], None] | None = None,
    spillover: SpillPolicy | None = None,
    settings: PolicySettings | None = None,
    interval_seconds: float | None = None,
) -> dict[str, Any]:
    """Every named scenario over every seed: per scenario the mean and the worst case of
    each target (the JSON object ``shoal sim --study`` prints); ``settings`` and
    ``interval_seconds`` as :func:`run_study` takes them."""
    say = progress or (lambda _: None)
    started = time.perf_counter()
    out: dict[str, Any] = {
        "seeds": seeds,
        "spillover": None
        if spillover is None
        else {
            "max_quality_drop": spillover.max_quality_drop,
            "slo_share": spillover.slo_share,
            "bridge": (settings or PolicySettings()).spill_bridge,
        },
        "scenarios": {},
    }
    for name in names:
        runs = []
        for seed in seeds:
            summary = run_study(
                scenario_named(name),
                seed,
                spillover=spillover,
                settings=settings,
                interval_seconds=interval_seconds,
            ).summary()
            say(
                f"{name} seed {seed}: {100 * summary['slo_attainment']:.2f}% in SLO, "
                f"{summary['cost_vs_static']:.3f} of static, "
                f"{summary['cost_vs_optimal']:.3f} of optimal, "
                f"{100 * summary['spilled_share']:.2f}% spilled"
            )
            runs.append(summary)
        out["scenarios"][name] = aggregate(runs)
    out["simulated_in_seconds"] = round(time.perf_counter() - started, 1)
    return out
