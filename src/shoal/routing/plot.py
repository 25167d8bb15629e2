"""The quality/cost frontier as a PNG: the router's alpha sweep with the baselines marked.

Uses matplotlib's non-interactive Agg backend; called by ``shoal router eval --plot``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_frontier(report: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Write the sweep of ``report`` (from ``evaluate_router``) and its baselines to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["sweep"]
    base = report["baselines"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs = [p["cost"] for p in sweep]
    ys = [100 * p["accuracy"] for p in sweep]
    ax.plot(xs, ys, "-o", color="tab:blue", markersize=3, label="router (alpha sweep)")
    for p in sweep:
        if p["alpha"] in (0.0, 0.5, 1.0):
            ax.annotate(f"a={p['alpha']:g}", (p["cost"], 100 * p["accuracy"]), fontsize=7)
    for name, s in base.get("single", {}).items():
        ax.scatter(s["cost"], 100 * s["accuracy"], color="grey", s=12)
        ax.annotate(name.split("/")[-1], (s["cost"], 100 * s["accuracy"]), fontsize=6, color="grey")
    marks = {
        "best_single": "tab:red",
        "per_task_best": "tab:orange",
        "oracle": "tab:green",
        "random": "black",
    }
    for key, colour in marks.items():
        b = base[key]
        ax.scatter(
            b["cost"],
            100 * b["accuracy"],
            color=colour,
            marker="*",
            s=90,
            label=key.replace("_", " "),
        )
    ax.set_xlabel("total cost (USD)" if any(xs) else "total cost (USD; all models equal)")
    ax.set_ylabel("accuracy, mean of per-task (%)")
    ax.set_title(title or "router quality/cost frontier")
    return _finish(fig, ax, path)


def plot_learning(report: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Write the learning curve of ``shoal router learn`` (accuracy by feedback events);
    ``report["curves"]`` (label -> curve), when present, draws several learners instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report.get("curves") or {"refit tables": report["curve"]}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, curve in curves.items():
        xs = [max(p["events"], 1) for p in curve]
        ax.plot(xs, [100 * p["accuracy"] for p in curve], "-o", markersize=3, label=label)
    for i, (name, v) in enumerate(report.get("variants", {}).items()):
        ax.axhline(100 * v["accuracy"], linestyle=":", linewidth=1, color=f"C{i + 1}", label=name)
    for name, value in report.get("references", {}).items():
        ax.axhline(100 * value, linestyle="--", linewidth=1, color="grey")
        ax.annotate(name, (xs[0], 100 * value), fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("feedback events (log)")
    ax.set_ylabel("held-out accuracy, mean of per-task (%)")
    ax.set_title(title or "learning from bandit feedback")
    return _finish(fig, ax, path)


def _finish(fig: Any, ax: Any, path: str | Path) -> Path:
    """Grid, legend and layout of a plot, written to ``path`` (folders made) and closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_cascade(block: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Write the ``cascade`` block of ``shoal router eval``: each cascade's frontier, single-shot
    routing's and every single model, accuracy against cost as a share of the reference's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ref = 100 * block["reference_accuracy"]
    for name, s in block["strategies"].items():
        pts = s["frontier"]
        xs = [100 * p["cost_fraction"] for p in pts]
        ys = [100 * p["accuracy"] for p in pts]
        if s["kind"] == "single":
            ax.scatter(xs, ys, color="grey", s=12)
            label = name.removeprefix("single:").split("/")[-1]
            ax.annotate(label, (xs[0], ys[0]), fontsize=6, color="grey")
        elif s["kind"] == "routing":
            ax.step(xs, ys, "-o", where="post", color="black", markersize=3,
                    label="single-shot routing")  # fmt: skip
        else:
            ax.step(xs, ys, "-o", where="post", markersize=3, label=name)
    ax.axhline(ref, linestyle="--", linewidth=1, color="tab:red", label=block["reference"])
    ax.axhline(0.99 * ref, linestyle=":", linewidth=1, color="tab:red", label="99% of it")
    ax.axvline(40, linestyle=":", linewidth=1, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel(f"cost, % of {block['reference']}'s (log)")
    ax.set_ylabel("accuracy, mean of per-task (%)")
    ax.set_ylim(max(40.0, ax.get_ylim()[0]), None)
    ax.set_title(title or "cascades, single-shot routing and single models")
    return _finish(fig, ax, path)
