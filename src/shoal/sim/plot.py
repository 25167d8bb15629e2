"""The study's figure: traffic, fleet cost over time per policy, and Shoal's replicas.

Matplotlib (from the ``routing`` extra) is imported here only, with the non-interactive Agg
backend, so the simulator itself never needs it.
"""

from __future__ import annotations

from pathlib import Path

from shoal.sim.simulator import replicas_at
from shoal.sim.study import Study, pool_specs

COLORS = {"shoal": "#1f77b4", "queue-threshold": "#ff7f0e", "static-peak": "#7f7f7f",
          "optimal": "#2ca02c"}  # fmt: skip


def plot_study(study: Study, path: Path) -> Path:
    """Write the study's figure as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = study.scenario
    hours = sc.duration / 3600.0
    step = max(15.0, sc.duration / 1500)
    times = [i * step for i in range(int(sc.duration // step) + 1)]
    xs = [t / 3600.0 for t in times]
    price = {p.name: p.price_per_hour for p in pool_specs(sc)}

    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    ax = axes[0]
    # The arrivals actually replayed (the scenario's synthetic trace or the --trace file),
    # per topic and minute.
    bucket = 60.0
    slots = int(sc.duration // bucket) + 1
    counts: dict[str, list[int]] = {}
    for req in study.trace:
        k = int(req.arrival // bucket)
        if k < slots:
            counts.setdefault(req.topic, [0] * slots)[k] += 1
    mids = [(k + 0.5) * bucket / 3600.0 for k in range(slots)]
    for topic, row in counts.items():
        ax.plot(mids, [c / bucket for c in row], label=topic, linewidth=1)
    ax.set_ylabel("arrivals/s (per minute)")
    if study.trace_file is not None:
        title = f"shoal sim --trace {study.trace_file.name} (fleet of scenario {sc.name})"
        detail = f"{len(study.trace)} requests replayed from {study.trace_file}"
    else:
        title = f"shoal sim --scenario {sc.name} (seed {study.seed})"
        detail = sc.description
    ax.set_title(f"{title}\n{detail}", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[1]
    summary = study.summary()["policies"]
    for name, r in study.results.items():
        cost = [sum(replicas_at(tl, t) * price[m] for m, tl in r.timeline.items()) for t in times]
        s = summary[name]
        label = f"{name}: ${s['cost_usd']:.0f}, {100 * s['slo_attainment']:.2f}% in SLO"
        ax.step(xs, cost, where="post", color=COLORS.get(name), linewidth=1.2, label=label)
    ax.set_ylabel("fleet cost (USD/h)")
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[2]
    shoal, optimal = study.results["shoal"], study.results["optimal"]
    for i, (m, tl) in enumerate(shoal.timeline.items()):
        color = f"C{i}"
        ax.step(
            xs, [replicas_at(tl, t) for t in times], where="post", color=color, label=f"{m} (shoal)"
        )
        ax.step(
            xs,
            [replicas_at(optimal.timeline[m], t) for t in times],
            where="post",
            color=color,
            linestyle=":",
            linewidth=1,
        )
    ax.set_ylabel("replicas (dotted: optimal)")
    ax.set_xlabel("hours")
    ax.set_xlim(0, hours)
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
