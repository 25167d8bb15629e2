"""Replay study: how far bandit feedback takes a router fitted on little calibration data.

For each public data set (``$SHOAL_DATA_DIR/routing``): fit the router on a seeded 10% of
train, stream the other 90% of train as requests with bandit feedback (only the chosen
model's score revealed; Thompson exploration; tables refit every 50 events), and evaluate on
test at 1k / 5k / all events. References: the router fitted on all of train, the best model
per task (chosen on test, optimistic), the per-query oracle. Variants over the same feedback
log: per-query kNN estimates and finer clusters (``shoal.routing.perquery``). For RouterBench
the alpha sweep of the learned tables gives the cost of reaching GPT-4's test accuracy.

Two learners over the same stream, per seed: *unguarded* (the plain posterior adopted at
every refit, exploration and prior weight chosen on train) and *guarded* (Thompson
exploration with logged propensities, pessimistic tables, 30% of the feedback held out, a
refit adopted only when the doubly robust estimate's lower 95% bound of its gain over the
tables in use is above 0; :mod:`shoal.routing.replay`). For each: test accuracy before and
after, and the off-policy estimate of the learned router next to its true value on the
held-out feedback. ``--seeds 0,1,2`` runs several seeds and reports mean and worst seed.

Parameters are fixed before looking at test (the fit's are the CV-chosen ones of
docs/routing.md; the guard's are the defaults of ``shoal router learn``). Prints a table per
data set and seed, writes docs/img/learn-<set>.png with ``--plot`` (first seed), and prints
one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shoal.routing import fit_router, load_calibration, make_embedder
from shoal.routing.cache import cached_embed
from shoal.routing.evaluate import baselines, cheapest_reaching
from shoal.routing.fit import score_matrices
from shoal.routing.learn import labelled, learn
from shoal.routing.perquery import knn_choice
from shoal.routing.replay import Labelled, ReplayConfig, evaluate_choice, replay
from shoal.routing.tables import TableRouter

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHOAL_DATA_DIR", REPO.parent / "shared" / "data")) / "routing"
SETS = {
    "routerdc": {"dir": "routerdc-7b", "clusters": 16, "top_p": 1, "alpha": 1.0},
    "routerbench": {"dir": "routerbench", "clusters": 16, "top_p": 3, "alpha": 1.0},
    # A shifted workload: the calibration sample has none of GSM8K's and HumanEval's
    # prompts; the feedback stream and test have all five tasks.
    "routerdc-shift": {
        "dir": "routerdc-7b",
        "clusters": 16,
        "top_p": 1,
        "alpha": 1.0,
        "calibration_tasks": ("arc_challenge", "cmmlu", "mmlu"),
    },
}
CHECKPOINTS = (100, 250, 500, 1000, 2000, 5000)  # multiples of the refit batch
ALPHAS = tuple(round(a, 3) for a in np.linspace(0.0, 1.0, 41))


def split_files(folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".csv"))
    return [p for p in files if "train" in p.name], [p for p in files if "test" in p.name]


def sweep(router: TableRouter, held: Labelled, choose: Any) -> list[dict[str, Any]]:
    out = []
    for a in ALPHAS:
        point = evaluate_choice(choose(a), held, router.models)
        out.append({"alpha": a, "accuracy": point["accuracy"], "cost": point["cost"]})
    return out


GRID = [(e, w) for e in ("thompson", "epsilon", "greedy") for w in (2.0, 8.0, 32.0)]


def select(
    small: bytes, stream: Labelled, alpha: float, seed: int
) -> tuple[ReplayConfig, list[Any]]:
    """Exploration and prior weight chosen on train only: replay 8/9 of the stream, score on
    the other 1/9 (about 10% of train)."""
    router = TableRouter.from_artifact(small)
    order = np.random.default_rng(seed + 1).permutation(len(stream))
    n_val = len(stream) // 9
    val, rest = np.sort(order[:n_val]), np.sort(order[n_val:])

    def part(rows: Any) -> Labelled:
        return Labelled(
            stream.vectors[rows],
            stream.quality[rows],
            stream.cost[rows],
            tuple(stream.tasks[i] for i in rows),
        )

    table = []
    for explore, weight in GRID:
        cfg = ReplayConfig(prior_weight=weight, explore=explore, batch=50, seed=seed, alpha=alpha)
        acc = replay(router, part(rest), part(val), cfg).curve[-1]["accuracy"]
        table.append({"explore": explore, "prior_weight": weight, "val_accuracy": acc})
    best = max(table, key=lambda r: r["val_accuracy"])
    chosen = ReplayConfig(
        prior_weight=best["prior_weight"],
        explore=best["explore"],
        batch=50,
        seed=seed,
        alpha=alpha,
        checkpoints=CHECKPOINTS,
    )
    return chosen, table


#: The guard's settings (the defaults of ``shoal router learn``).
GUARD = {"guard": True, "holdout": 0.3, "guard_every": 500, "margin": 0.0, "ab": 0.25}
#: The guarded learners: the guard alone, and the guard over pessimistic tables.
GUARDED = {"guarded": 0.0, "guarded_pessimistic": 1.0}
LEARNERS = ("unguarded", *GUARDED)


def guarded_config(chosen: ReplayConfig, pessimism: float) -> ReplayConfig:
    """A guarded learner: Thompson (every model keeps a propensity), the prior weight
    chosen on train, the off-policy guard, tables as pessimistic as asked."""
    return replace(chosen, explore="thompson", pessimism=pessimism, **GUARD)  # type: ignore[arg-type]


def brief(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of one learner's report that the summary keeps."""
    op = report["offpolicy"]
    return {
        "accuracy_before": report["accuracy_before"],
        "accuracy_after": report["accuracy_after"],
        "cost_per_query_before": report["cost_per_query_before"],
        "cost_per_query_after": report["cost_per_query_after"],
        "explore": report["explore"],
        "prior_weight": report["prior_weight"],
        "adopted": report["adopted"],
        "guard_looks": report["guard_looks"],
        "curve": [
            {k: p[k] for k in ("events", "accuracy", "cost_per_query")} for p in report["curve"]
        ],
        "offpolicy": {
            k: op.get(k)
            for k in ("events", "in_sample", "true_after", "true_difference", "naive_after")
        }
        | {
            m: {k: op[m][k] for k in ("after", "difference", "difference_lower")}
            for m in ("ips", "snips", "dr")
            if m in op
        },
    }


def mechanism(small: bytes, stream: Labelled, seed: int) -> list[dict[str, Any]]:
    """Why plain bandit feedback can make the router worse, measured on the stream: replay it
    (greedy and Thompson, prior weight 8, the plain posterior), then compare each cluster's
    tables with the stream's true per-cluster mean of every model (nearest cluster)."""
    r0 = TableRouter.from_artifact(small)
    near = r0.neighbours(stream.vectors)[0][:, 0]
    k, m = r0.quality.shape
    true = np.full((k, m), np.nan)
    for c in range(k):
        if (near == c).any():
            true[c] = stream.quality[near == c].mean(axis=0)
    at = np.arange(k)
    old = r0.quality.argmax(axis=1)
    others = np.ones((k, m), dtype=bool)
    others[at, old] = False
    out = []
    for explore in ("greedy", "thompson"):
        cfg = ReplayConfig(prior_weight=8.0, explore=explore, batch=50, seed=seed, alpha=1.0)  # type: ignore[arg-type]
        res = replay(r0, stream, stream, cfg)
        events, post = res.feedback.events, res.router.quality
        new = post.argmax(axis=1)
        changed = old != new
        share = np.bincount(near, minlength=k) / len(near)
        gain = np.nansum(((true[at, new] - true[at, old]) * share)[changed])
        out.append(
            {
                "explore": explore,
                "clusters_changed": int(changed.sum()),
                "changed_to_unscored": int((changed & (events[at, new] < 3)).sum()),
                "prior_bias_chosen": float(np.nanmean(r0.quality[at, old] - true[at, old])),
                "prior_bias_others": float(np.nanmean((r0.quality - true)[others])),
                "learned_bias_scored": float(np.nanmean((post - true)[events >= 10])),
                "learned_bias_unscored": float(np.nanmean((post - true)[events < 3])),
                "true_effect_on_stream": float(gain),
            }
        )
    return out


def study(
    name: str,
    spec: dict[str, Any],
    *,
    fraction: float,
    seed: int,
    variants: bool,
    diagnose: bool = False,
) -> dict[str, Any]:
    emb = make_embedder("minilm-l6-static-v2")
    train_files, test_files = split_files(DATA / spec["dir"])
    train, test = load_calibration(train_files), load_calibration(test_files)
    xtr = cached_embed(emb, [s.prompt for s in train])
    xte = cached_embed(emb, [s.prompt for s in test])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    n_cal = round(fraction * len(train))
    cal_idx, stream_idx = np.sort(order[:n_cal]), np.sort(order[n_cal:])
    if "calibration_tasks" in spec:  # the shifted workload: other tasks only in the stream
        seen = np.array([train[i].task in spec["calibration_tasks"] for i in cal_idx])
        cal_idx = cal_idx[seen]
    fit_args = {k: spec[k] for k in ("clusters", "top_p", "alpha")}
    when = datetime(2026, 12, 1, tzinfo=UTC)
    small = fit_router(
        [train[i] for i in cal_idx],
        embedder=emb,
        embeddings=xtr[cal_idx],
        seed=seed,
        fitted_at=when,
        **fit_args,
    )
    full = fit_router(train, embedder=emb, embeddings=xtr, seed=seed, fitted_at=when, **fit_args)
    models = list(TableRouter.from_artifact(small).models)  # the tables' column order
    stream = labelled([train[i] for i in stream_idx], xtr[stream_idx], models)
    held = labelled(test, xte, models)
    cfg, selection = select(small, stream, spec["alpha"], seed)
    outcome = learn(
        small,
        stream,
        held,
        cfg,
        now=when,
        variants=variants,
        fine_clusters=(32, 64, 128),
        knn_neighbours=(50, 200),
    )
    safe = {
        key: learn(small, stream, held, guarded_config(cfg, k), now=when)
        for key, k in GUARDED.items()
    }
    full_router = TableRouter.from_artifact(full)
    full_point = evaluate_choice(full_router.choose(held.vectors), held, full_router.models)
    q, c = score_matrices(test, models)
    base = baselines(q, c, list(held.tasks), models)
    report: dict[str, Any] = {
        "set": name,
        "calibration_samples": int(n_cal),
        "stream_samples": len(stream),
        "test_samples": len(held),
        **outcome.report,
        "full_train": {
            "accuracy": full_point["accuracy"],
            "cost_per_query": full_point["cost_per_query"],
        },
        "per_task_best": base["per_task_best"]["accuracy"],
        "best_single": {
            "model": base["best_single"]["model"],
            "accuracy": base["best_single"]["accuracy"],
            "cost": base["best_single"]["cost"],
        },
        "oracle": base["oracle"]["accuracy"],
        "selection": selection,
        "mechanism": mechanism(small, stream, seed) if diagnose else [],
        "unguarded": brief(outcome.report),
        **{key: brief(out.report) for key, out in safe.items()},
    }
    if name == "routerbench":
        gpt4 = next(m for m in models if m.startswith("gpt-4"))
        target = base["single"][gpt4]
        learned = TableRouter.from_artifact(outcome.artifact)
        learned_safe = TableRouter.from_artifact(safe["guarded"].artifact)
        small_r = TableRouter.from_artifact(small)
        if variants:  # same seed: the same log as inside learn()
            res = replay(small_r, stream, held, cfg)
        curves = {
            "small_fit": sweep(small_r, held, lambda a: small_r.choose(held.vectors, alpha=a)),
            "full_fit": sweep(
                full_router, held, lambda a: full_router.choose(held.vectors, alpha=a)
            ),
            "learned": sweep(learned, held, lambda a: learned.choose(held.vectors, alpha=a)),
            "guarded": sweep(
                learned_safe, held, lambda a: learned_safe.choose(held.vectors, alpha=a)
            ),
        }
        if variants:
            curves["knn_200"] = sweep(
                learned,
                held,
                lambda a: knn_choice(
                    res.router, res.log, stream, held.vectors, neighbours=200, alpha=a
                ),
            )
        reach = {}
        for key, pts in curves.items():
            hit = cheapest_reaching(pts, target["accuracy"])
            reach[key] = (
                None
                if hit is None
                else {
                    "alpha": hit["alpha"],
                    "accuracy": hit["accuracy"],
                    "cost_ratio": hit["cost"] / target["cost"],
                }
            )
        report["gpt4"] = {"model": gpt4, "accuracy": target["accuracy"], "cost": target["cost"]}
        report["reach_gpt4"] = reach
    return report


def show(r: dict[str, Any]) -> None:
    print(
        f"\n== {r['set']} seed {r['seed']}: fit on {r['calibration_samples']}, stream "
        f"{r['stream_samples']}, test {r['test_samples']}"
    )
    for key in LEARNERS:
        g = r[key]
        curve = " -> ".join(f"{100 * p['accuracy']:.2f}" for p in g["curve"])
        print(f"  {key:>9} ({g['explore']}, prior {g['prior_weight']:g}): {curve}")
        print(
            f"  {'':>9} cost/query {g['cost_per_query_before']:.6f} -> "
            f"{g['cost_per_query_after']:.6f}"
        )
        for look in g["guard_looks"]:
            print(
                f"  {'':>9} guard at {look['events']:>5}: estimate {100 * look['estimate']:+.2f}"
                f" (lower {100 * look['lower']:+.2f}), true {100 * look['true_difference']:+.2f}"
                + (" adopted" if look["adopted"] else " shadow")
            )
        op = g["offpolicy"]
        if op.get("events"):
            where = "logged (in sample)" if op["in_sample"] else "held-out"
            print(
                f"  {'':>9} on {op['events']} {where} events: true {100 * op['true_after']:.2f}%,"
                f" DR {100 * op['dr']['after']:.2f}%, SNIPS {100 * op['snips']['after']:.2f}%, "
                f"IPS {100 * op['ips']['after']:.2f}%, naive {100 * op['naive_after']:.2f}%; "
                f"gain true {100 * op['true_difference']:+.2f}, DR "
                f"{100 * op['dr']['difference']:+.2f} (lower "
                f"{100 * op['dr']['difference_lower']:+.2f})"
            )
    for d in r.get("mechanism", []):
        print(
            f"  mechanism ({d['explore']}, plain posterior): {d['clusters_changed']} clusters "
            f"changed, {d['changed_to_unscored']} to a model with < 3 events; prior bias of the "
            f"chosen model {100 * d['prior_bias_chosen']:+.1f} points, of the others "
            f"{100 * d['prior_bias_others']:+.1f}; after feedback, scored cells "
            f"{100 * d['learned_bias_scored']:+.1f}, unscored "
            f"{100 * d['learned_bias_unscored']:+.1f}; true effect of the changes "
            f"{100 * d['true_effect_on_stream']:+.2f}"
        )
    for k, v in r.get("variants", {}).items():
        print(f"  {k:>10}  accuracy {100 * v['accuracy']:.2f}%")
    print(
        f"  full train fit {100 * r['full_train']['accuracy']:.2f}%, best per task "
        f"{100 * r['per_task_best']:.2f}%, oracle {100 * r['oracle']:.2f}%"
    )
    for k, v in r.get("reach_gpt4", {}).items():
        print(
            f"  reaches GPT-4 ({k}): "
            + (
                "never"
                if v is None
                else f"alpha {v['alpha']}, {100 * v['cost_ratio']:.1f}% of its cost"
            )
        )


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst seed of each learner's accuracy before, after and their difference."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for key in LEARNERS:
        before = np.array([r[key]["accuracy_before"] for r in runs])
        after = np.array([r[key]["accuracy_after"] for r in runs])
        cost_b = np.array([r[key]["cost_per_query_before"] for r in runs])
        cost_a = np.array([r[key]["cost_per_query_after"] for r in runs])
        gain = after - before
        out[key] = {
            "accuracy_before_mean": float(before.mean()),
            "accuracy_after_mean": float(after.mean()),
            "gain_mean": float(gain.mean()),
            "gain_worst": float(gain.min()),
            "gain_best": float(gain.max()),
            "seeds_below_before": int((gain < -1e-12).sum()),
            "seeds_above_before": int((gain > 1e-12).sum()),
            "cost_per_query_before_mean": float(cost_b.mean()),
            "cost_per_query_after_mean": float(cost_a.mean()),
        }
        ests = [r[key]["offpolicy"] for r in runs if r[key]["offpolicy"].get("events")]
        if ests:
            err = np.array([e["dr"]["after"] - e["true_after"] for e in ests])
            naive = np.array([e["naive_after"] - e["true_after"] for e in ests])
            out[key]["dr_error_mean_abs"] = float(np.abs(err).mean())
            out[key]["naive_error_mean_abs"] = float(np.abs(naive).mean())
        looks = [look for r in runs for look in r[key]["guard_looks"]]
        if looks:
            est = np.array([look["estimate"] for look in looks])
            low = np.array([look["lower"] for look in looks])
            true = np.array([look["true_difference"] for look in looks])
            adopted = np.array([look["adopted"] for look in looks])
            out[key]["guard"] = {
                "looks": len(looks),
                "adopted": int(adopted.sum()),
                "adopted_truly_worse": int((adopted & (true < 0)).sum()),
                "estimate_error_mean_abs": float(np.abs(est - true).mean()),
                "lower_bound_covers_truth": float((low <= true).mean()),
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="routerdc,routerbench")
    ap.add_argument("--fraction", type=float, default=0.10)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--variants", action="store_true", help="also kNN and finer clusters")
    ap.add_argument(
        "--mechanism", action="store_true", help="also measure why plain feedback misleads"
    )
    ap.add_argument("--plot", action="store_true", help="write docs/img/learn-<set>.png")
    ns = ap.parse_args()
    if not DATA.is_dir():
        print(f"no data at {DATA} (set SHOAL_DATA_DIR)", file=sys.stderr)
        return 2
    seeds = [int(x) for x in ns.seeds.split(",")]
    out: dict[str, Any] = {}
    for name in ns.sets.split(","):
        runs = []
        for seed in seeds:
            r = study(
                name,
                SETS[name],
                fraction=ns.fraction,
                seed=seed,
                variants=ns.variants,
                diagnose=ns.mechanism,
            )
            r["seed"] = seed
            show(r)
            sys.stdout.flush()
            if ns.plot and seed == seeds[0]:
                from shoal.routing.plot import plot_learning

                r["references"] = {
                    "full train fit": r["full_train"]["accuracy"],
                    "best per task": r["per_task_best"],
                }
                plot_learning(
                    {**r, "curves": {key: r[key]["curve"] for key in LEARNERS}},
                    REPO / "docs" / "img" / f"learn-{name}.png",
                    title=f"{name} seed {seed}: fit on 10% of train, bandit feedback from the rest",
                )
            runs.append(
                {k: v for k, v in r.items() if k not in ("curve", "share_after", "guard_looks")}
            )
        summary = summarise(runs)
        for key in LEARNERS:
            sm = summary[key]
            print(
                f"\n{name} {key} over seeds {ns.seeds}: accuracy "
                f"{100 * sm['accuracy_before_mean']:.2f} -> {100 * sm['accuracy_after_mean']:.2f}"
                f" (gain mean {100 * sm['gain_mean']:+.2f}, worst {100 * sm['gain_worst']:+.2f},"
                f" best {100 * sm['gain_best']:+.2f}; {sm['seeds_below_before']} seeds below "
                f"before), cost/query {sm['cost_per_query_before_mean']:.6f} -> "
                f"{sm['cost_per_query_after_mean']:.6f}"
            )
            if "guard" in sm:
                gd = sm["guard"]
                print(
                    f"  guard: {gd['looks']} looks, {gd['adopted']} adopted "
                    f"({gd['adopted_truly_worse']} truly worse on the held-out feedback), "
                    f"estimate off by {100 * gd['estimate_error_mean_abs']:.2f} points on "
                    f"average, lower bound below the truth in "
                    f"{100 * gd['lower_bound_covers_truth']:.0f}% of looks"
                )
        out[name] = {"summary": summary, "runs": runs}
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
