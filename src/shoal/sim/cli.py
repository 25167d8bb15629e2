"""``shoal sim``: run the autoscaling study on a scenario and print what it found.

``shoal sim --scenario bursty --json`` prints one JSON object (``slo_attainment``,
``cost_vs_static``, ``cost_vs_optimal`` and the figures behind them) and writes the plot.
``shoal sim --study`` runs every scenario over several seeds and reports the mean and the
worst case of each target. Thin on purpose: the work is in :mod:`shoal.sim.study`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def sim(
    scenario: str = typer.Option(
        "bursty",
        "--scenario",
        "-s",
        help="bursty, diurnal, hot-topic, step, spike, or hybrid (a frontier model served "
        "outside the fleet: spend and savings).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic trace (deterministic)."),
    cascade_escalation: float | None = typer.Option(
        None,
        "--cascade-escalation",
        min=0.0,
        max=1.0,
        help="The fleet cascades (RoutingPolicy strategy cascade): every request is answered "
        "by its cheap model first and this share is escalated to the policy's choice after "
        "the first answer (the share `shoal router eval` measured for the plan).",
    ),
    cascade_voters: int = typer.Option(
        0, "--cascade-voters", min=0, max=4, help="Cheap voters per cascaded request."
    ),
    trace: Path | None = typer.Option(
        None,
        "--trace",
        help="Replay this JSONL trace instead of the scenario's synthetic one "
        '(lines {"t": s, "topic": ..., "prompt_tokens": n, "output_tokens": n}).',
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Where to write the PNG plot (default: sim-<scenario>.png)."
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Write no plot."),
    many: bool = typer.Option(
        False,
        "--study",
        help="Run every scenario (smooth and sharp) over --seeds seeds and report the mean "
        "and the worst case of each target (no plot).",
    ),
    seeds: int = typer.Option(5, "--seeds", min=1, max=100, help="Seeds 0..N-1 of --study."),
    spillover: bool = typer.Option(
        False,
        "--spillover/--no-spillover",
        help="The ingress spills a request to the next-best model while its first choice "
        "would break its latency objective (RoutingPolicy spec.spillover).",
    ),
    max_quality_drop: float = typer.Option(
        0.1,
        "--max-quality-drop",
        min=0.0,
        max=1.0,
        help="Largest quality drop spillover may take, in the router's per-cluster units.",
    ),
    slo_share: float = typer.Option(
        1.0,
        "--slo-share",
        min=0.05,
        max=1.0,
        help="Share of a tier's objective spillover's estimate may fill and still fit.",
    ),
    spill_bridge: float = typer.Option(
        0.0,
        "--spill-bridge",
        min=0.0,
        max=10.0,
        help="With --spillover: while a model's replicas start, Shoal's autoscaler sizes the "
        "model that takes its spilled requests for this many times the requests in flight "
        "its ready replicas cannot carry (0: off; the autoscaling policy's spill_bridge).",
    ),
    autoscaler_interval: float | None = typer.Option(
        None,
        "--autoscaler-interval",
        min=1.0,
        max=120.0,
        help="Seconds between two evaluations of Shoal's autoscaler (default: the "
        "scenario's, 15; the operator's SHOAL_AUTOSCALER_INTERVAL_SECONDS).",
    ),
    scenarios: str = typer.Option(
        "",
        "--scenarios",
        help="With --study: comma-separated scenarios (default: every study scenario and "
        "the held-out flash-crowd).",
    ),
) -> None:
    """Simulate the fleet under Shoal's autoscaler and three baselines; compare them."""
    from rich.console import Console

    from shoal.autoscaling.policy import PolicySettings
    from shoal.routing.spillover import SpillPolicy
    from shoal.sim.study import TARGETS, run_study, scenario_named

    err = Console(stderr=True)
    settings = PolicySettings(spill_bridge=spill_bridge)
    spill = (
        SpillPolicy(enabled=True, max_quality_drop=max_quality_drop, slo_share=slo_share)
        if spillover
        else None
    )
    if many:
        names = [n.strip() for n in scenarios.split(",") if n.strip()]
        _study(list(range(seeds)), as_json, err, spill, names, settings, autoscaler_interval)
        return
    try:
        chosen = scenario_named(scenario)
    except KeyError as exc:
        err.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(2) from exc
    from shoal.sim.cascade import CascadeSpec

    spec = (
        None
        if cascade_escalation is None
        else CascadeSpec(cascade_escalation, voters=cascade_voters, seed=seed)
    )
    study = run_study(
        chosen,
        seed,
        trace_file=trace,
        progress=None if as_json else err.print,
        cascade=spec,
        spillover=spill,
        settings=settings,
        interval_seconds=autoscaler_interval,
    )
    summary = study.summary()
    if not no_plot:
        from shoal.sim.plot import plot_study

        written = plot_study(study, plot or Path(f"sim-{chosen.name}.png"))
        summary["plot"] = str(written)
    if as_json:
        print(json.dumps(summary))
        return
    from rich.table import Table

    table = Table(title=f"{chosen.name}: {chosen.description}")
    cols = ("policy", "in SLO", "cost USD", "USD/h", "TTFT p99 ms", "changes", "spilled",
            "quality lost")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, p in summary["policies"].items():
        table.add_row(
            name,
            f"{100 * p['slo_attainment']:.2f}%",
            f"{p['cost_usd']:.2f}",
            f"{p['mean_cost_per_hour']:.2f}",
            f"{p['ttft_p99_ms']:.0f}",
            str(p["replica_changes"]),
            f"{100 * p['spilled_share']:.2f}%",
            f"{p['quality_lost_per_request']:.4f}",
        )
    Console().print(table)
    for name, p in summary["policies"].items():
        if "reference_cost_usd" in p:  # a fleet with a savings reference (spec.savings)
            outside = sum(p.get("external_cost_usd", {}).values())
            saved = p["saved_percent"]
            Console().print(
                f"{name}: spent ${p['cost_usd']:.2f} (${outside:.2f} on models served outside "
                f"the fleet) against ${p['reference_cost_usd']:.2f} at the reference"
                + (f": {saved:.1f}% saved" if saved is not None else "")
            )
    if "cascade" in summary:
        c = summary["cascade"]
        Console().print(
            f"cascade: {c['attempts']} attempts for {c['requests']} requests "
            f"({c['escalated']} escalated, {c['voter_calls']} voter calls; "
            f"+{c['extra_prompt_tokens']} prompt and +{c['extra_output_tokens']} output tokens); "
            f"an escalated request waits +{c['added_latency_mean']:.2f} s on average "
            f"(p95 +{c['added_latency_p95']:.2f} s) for the first answer"
        )
    met = summary["targets_met"]
    for key, target in TARGETS.items():
        op = ">=" if key == "slo_attainment" else "<="
        mark = "[green]met[/green]" if met[key] else "[red]missed[/red]"
        Console().print(f"{key} = {summary[key]} (target {op} {target}): {mark}")
    if "plot" in summary:
        Console().print(f"plot: {summary['plot']}")


def _study(
    seeds: list[int],
    as_json: bool,
    err: Any,
    spill: Any = None,
    names: list[str] | None = None,
    settings: Any = None,
    interval: float | None = None,
) -> None:
    from rich.console import Console
    from rich.table import Table

    from shoal.sim.scenarios import HELD_OUT, SCENARIOS, SHARP
    from shoal.sim.study import run_many

    chosen = names or [*SCENARIOS, *HELD_OUT]
    out = run_many(
        chosen,
        seeds,
        progress=None if as_json else err.print,
        spillover=spill,
        settings=settings,
        interval_seconds=interval,
    )
    if as_json:
        print(json.dumps(out))
        return
    how = "spillover off" if spill is None else f"spillover to {spill.max_quality_drop} quality"
    if spill is not None and spill.slo_share < 1.0:
        how += f" at {spill.slo_share:g} of the objective"
    if spill is not None and settings is not None and settings.spill_bridge > 0:
        how += f", bridge {settings.spill_bridge:g}"
    if interval is not None:
        how += f", autoscaler every {interval:g}s"
    table = Table(title=f"every scenario over seeds {seeds[0]}..{seeds[-1]}, {how}: mean (worst)")
    for col in ("scenario", "in SLO", "vs static", "vs optimal", "peak over 1.5x+1", "optimal",
                "spilled", "quality lost per spilled"):  # fmt: skip
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for name, a in out["scenarios"].items():
        slo, st, op = a["slo_attainment"], a["cost_vs_static"], a["cost_vs_optimal"]
        table.add_row(
            name
            + (" (sharp)" if name in SHARP else "")
            + (" (held out)" if name in HELD_OUT else ""),
            f"{100 * slo['mean']:.2f}% ({100 * slo['worst']:.2f}%)",
            f"{st['mean']:.3f} ({st['worst']:.3f})",
            f"{op['mean']:.3f} ({op['worst']:.3f})",
            f"{a['peak_excess']:+.1f}",
            f"{100 * a['optimal_slo_attainment']:.2f}% in SLO",
            f"{100 * a['spilled_share']:.2f}%",
            f"{a['quality_lost_per_spilled']:.3f}",
        )
    Console().print(table)
