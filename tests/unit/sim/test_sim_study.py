"""The study around the simulator: traffic, routing, hindsight baselines, determinism, the
budget in simulation, the plot and the command line."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.cli import app
from shoal.sim.controllers import max_between
from shoal.sim.optimal import (
    PoolSpec,
    capacity,
    erlang_c,
    hindsight_schedule,
    replicas_for,
    static_schedule,
)
from shoal.sim.scenarios import GENERAL, LARGE, MATH, Scenario, _topic, fleet_spec
from shoal.sim.simulator import replicas_at
from shoal.sim.study import run_study
from shoal.sim.workload import (
    Bursts,
    Constant,
    Diurnal,
    RoutingTable,
    Step,
    Sum,
    fit_workload_router,
)
from shoal.sim.workload import generate_trace as trace_of


def tiny(budget: str | None = None) -> Scenario:
    """Twenty minutes: steady math and general traffic, one math burst."""
    return Scenario(
        name="tiny",
        description="test",
        spec=fleet_spec(budget=budget),
        topics=(
            _topic("math", MATH, Sum((Constant(2.0), Bursts(6.0, (300.0,), 240.0, 120.0)))),
            _topic("general", GENERAL, Constant(2.0)),
        ),
        duration=1200.0,
    )


def sharp() -> Scenario:
    """Twenty minutes: steady traffic; math jumps at once to 6x, decaying over 10 minutes."""
    return Scenario(
        name="sharp",
        description="test",
        spec=fleet_spec(),
        topics=(
            _topic("math", MATH, Sum((Constant(2.0), Step(10.0, (300.0,), 600.0)))),
            _topic("general", GENERAL, Constant(2.0)),
        ),
        duration=1200.0,
    )


def test_a_step_does_not_run_the_replicas_away() -> None:
    """The signature of sizing from the queue: a step takes a model to far more replicas than
    the hindsight-optimal schedule needs. Sized from capacity, it stays within 1.5x + 1."""
    study = run_study(sharp(), seed=0)
    summary = study.summary()
    peaks = summary["policies"]["shoal"]["peak_replicas"]
    best = summary["policies"]["optimal"]["peak_replicas"]
    assert all(peaks[m] <= 1.5 * best[m] + 1 for m in best), (peaks, best)
    assert summary["peak_excess"] <= 0
    assert summary["policies"]["optimal"]["slo_attainment"] == 1.0


def test_a_step_jumps_at_once_and_decays() -> None:
    step = Step(12.0, (100.0,), decay=300.0)
    rates = [step.rate(t) for t in (99, 100, 250, 399, 400)]
    assert rates == pytest.approx([0.0, 12.0, 6.0, 0.04, 0.0])
    assert step.peak() == 12.0


def test_many_seeds_report_the_mean_and_the_worst_case() -> None:
    from shoal.sim.study import aggregate

    def run(seed: int, slo: float, static: float, optimal: float, excess: float) -> dict:  # type: ignore[type-arg]
        pol = {"slo_attainment": 1.0, "cost_usd": 10.0}
        return {
            "seed": seed, "slo_attainment": slo, "cost_vs_static": static,
            "cost_vs_optimal": optimal, "peak_excess": excess,
            "policies": {"optimal": pol, "queue-threshold": {"slo_attainment": 0.9,
                                                             "cost_usd": 9.0}},
        }  # fmt: skip

    a = aggregate([run(0, 0.99, 0.6, 1.1, -1.0), run(1, 0.97, 0.8, 1.4, 0.5)])
    assert a["slo_attainment"] == {"mean": 0.98, "worst": 0.97}
    assert a["cost_vs_static"] == {"mean": 0.7, "worst": 0.8}
    assert a["cost_vs_optimal"] == {"mean": 1.25, "worst": 1.4}
    assert a["peak_excess"] == 0.5 and a["optimal_slo_attainment"] == 1.0
    assert a["queue_threshold"] == {"slo_attainment": 0.9, "cost_vs_optimal": 0.9}
    assert a["targets_met"] == {
        "slo_attainment": False, "cost_vs_static": True, "cost_vs_optimal": False, "peak": False
    }  # fmt: skip


def test_erlang_c_and_capacity_behave() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = utilisation
    assert erlang_c(10, 5.0) < erlang_c(10, 8.0) < 1.0
    assert erlang_c(4, 4.0) == 1.0
    pool = PoolSpec("m", "large", LARGE, 30.0, 2.5, 1.0)
    mix = [(512, 320)]
    c1, c2, c4 = (capacity(pool, n, mix, 0.99) for n in (1, 2, 4))
    assert 0 < c1 < c2 < c4
    assert c4 > 4 * c1  # pooled replicas carry more than four single ones
    strict = replace(pool, slo_seconds=0.2)
    assert capacity(strict, 2, mix, 0.99) < c2


def test_hindsight_and_static_schedules() -> None:
    curve = [0.0, 2.0, 4.5, 7.0]
    assert replicas_for(curve, 0.0) == 0 and replicas_for(curve, 2.0) == 1
    assert replicas_for(curve, 4.6) == 3 and replicas_for(curve, 99.0) == 3
    # Minute 0: 60 arrivals (1/s); minute 1: none; minute 2: 240 (4/s).
    arrivals = [i for i in range(60)] + [120 + i / 4 for i in range(240)]
    sched = hindsight_schedule(arrivals, curve, 180.0, lo=0, hi=3)
    assert sched == [(0.0, 1), (60.0, 0), (120.0, 2)]
    assert hindsight_schedule(arrivals, curve, 180.0, lo=1, hi=3) == [(0.0, 1), (120.0, 2)]
    assert static_schedule({"m": sched}) == {"m": [(0.0, 2)]}
    assert replicas_at(sched, 90.0) == 0
    assert max_between(sched, 50.0, 130.0) == 2  # a replay starts them ahead of need


def test_traces_are_deterministic_and_follow_their_rates() -> None:
    topics = (_topic("math", MATH, Diurnal(1.0, 5.0, period=3600.0, peak_at=1800.0)),)
    a, b = trace_of(topics, 3600.0, seed=4), trace_of(topics, 3600.0, seed=4)
    assert a == b and a != trace_of(topics, 3600.0, seed=5)
    expected = 3.0 * 3600  # the cosine averages (low + high) / 2
    assert len(a) == pytest.approx(expected, rel=0.05)
    burst = Bursts(10.0, (100.0,), hold=60.0, ramp=20.0)
    assert [burst.rate(t) for t in (99, 110, 150, 190, 300)] == [0.0, 5.0, 10.0, 5.0, 0.0]


def test_routing_goes_through_the_fitted_router_and_follows_alpha() -> None:
    sc = tiny()
    cost = {m.name: 0.0004 if m.tier == "large" else 0.0001 for m in sc.spec.models}
    table = RoutingTable.build(fit_workload_router(sc.topics, cost, 0.7), sc.topics)
    first = {t.name: {table.ranked(t.name, p, 0.7)[0] for p in range(24)} for t in sc.topics}
    assert first["math"] == {"math-7b"}
    assert "general-7b" in first["general"]
    cheap = {table.ranked(t.name, p, 0.3)[0] for t in sc.topics for p in range(24)}
    assert cheap == {"mini-3b"}  # quality weighs little: the cheapest model wins
    assert table.ranked("math", 0, 0.71) == table.ranked("math", 0, 0.7)  # grid of 0.05


def test_a_study_is_deterministic_and_reports_the_issue_keys() -> None:
    one, two = run_study(tiny(), seed=1), run_study(tiny(), seed=1)
    a, b = one.summary(), two.summary()
    for s in (a, b):
        s.pop("simulated_in_seconds")
    assert a == b
    assert {"slo_attainment", "cost_vs_static", "cost_vs_optimal"} <= set(a)
    assert 0.0 <= a["slo_attainment"] <= 1.0
    assert set(a["policies"]) == {"shoal", "queue-threshold", "static-peak", "optimal"}
    static, optimal = one.results["static-peak"], one.results["optimal"]
    assert optimal.cost < static.cost  # the burst is short: holding its peak costs more


def test_the_budget_holds_in_simulation_too() -> None:
    study = run_study(tiny(budget="9.00"), seed=0)
    shoal = study.results["shoal"]
    price = {"math-7b": 2.5, "code-7b": 2.5, "general-7b": 2.5, "mini-3b": 0.6}
    times = sorted({t for tl in shoal.timeline.values() for t, _ in tl})
    worst = max(sum(replicas_at(tl, t) * price[m] for m, tl in shoal.timeline.items())
                for t in times)  # fmt: skip
    assert worst <= 9.0 + 1e-9
    assert study.summary()["policies"]["shoal"]["min_alpha"] < 0.7  # it bound, alpha went down


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from shoal.sim.plot import plot_study

    out = plot_study(run_study(tiny(), seed=0), tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_replayed_trace_is_what_the_study_and_its_plot_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typing import Any

    import numpy as np
    from matplotlib.figure import Figure

    from shoal.sim.plot import plot_study

    trace = tmp_path / "t.jsonl"
    rows = [{"t": 420 + i * 0.1, "topic": "general", "prompt_tokens": 200, "output_tokens": 100}
            for i in range(600)]  # fmt: skip
    trace.write_text("\n".join(json.dumps(r) for r in rows))
    study = run_study(tiny(), seed=0, trace_file=trace)
    assert study.summary()["trace"] == str(trace) and len(study.trace) == 600
    seen: dict[str, Any] = {}
    real_savefig = Figure.savefig

    def capture(fig: Figure, *args: Any, **kwargs: Any) -> None:
        ax = fig.axes[0]
        seen["title"] = ax.get_title()
        seen["lines"] = {ln.get_label(): float(np.max(ln.get_ydata())) for ln in ax.get_lines()}
        real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    plot_study(study, tmp_path / "trace.png")
    assert "--trace t.jsonl" in seen["title"] and "600 requests replayed" in seen["title"]
    # The top panel draws the trace's arrivals (10/s in one minute of general), not the
    # scenario's synthetic rates (math at 2/s plus its burst).
    assert seen["lines"] == {"general": 10.0}


def test_cli_rejects_unknown_scenarios() -> None:
    result = CliRunner().invoke(app, ["sim", "--scenario", "nope", "--json"])
    assert result.exit_code == 2
    assert "unknown scenario 'nope'" in result.output


@pytest.mark.slow
def test_cli_prints_one_json_object(tmp_path: Path) -> None:
    plot = tmp_path / "b.png"
    result = CliRunner().invoke(app, ["sim", "--scenario", "bursty", "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["scenario"] == "bursty" and plot.exists()
    assert all(
        not math.isnan(out[k]) for k in ("slo_attainment", "cost_vs_static", "cost_vs_optimal")
    )
