"""``shoal router``: fit a router artifact from calibration data, evaluate it, inspect it.

Thin typer commands over :mod:`shoal.routing`; numpy, ONNX Runtime and matplotlib are
imported inside the commands so that ``shoal --help`` stays fast. Errors in the data or the
artifact exit with status 2 and a one-line message naming the file and row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    help="Fit, evaluate and inspect the learned cluster router.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)

DATA_HELP = (
    "Calibration file(s): Shoal JSONL, RouterDC JSON or RouterBench CSV (by suffix). "
    "Repeat the option or pass several paths: --data a.json b.json."
)
#: The paths after the first one of ``--data a b c`` (click options take one value each, so
#: the others arrive as arguments).
MORE_DATA = typer.Argument(
    None, help="More calibration files, as in --data a b c.", show_default=False
)


def _data_files(data: list[Path], more: list[Path] | None) -> list[Path]:
    return [*data, *(more or [])]


@contextmanager
def _user_errors() -> Iterator[None]:
    from shoal.routing.artifact import ArtifactError
    from shoal.routing.data import CalibrationError
    from shoal.routing.embedders.base import EmbedderUnavailable

    try:
        yield
    except (CalibrationError, ArtifactError, EmbedderUnavailable, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _embed(embedder: Any, samples: list[Any], cache: bool) -> Any:
    from shoal.routing.cache import cached_embed
    from shoal.routing.fit import embed_all

    texts = [s.prompt for s in samples]
    with _progress(f"embedding {len(texts)} prompts ({embedder.name})") as update:
        if cache:
            return cached_embed(embedder, texts, progress=update)
        return embed_all(embedder, texts, progress=update)


@app.command()
def fit(
    data: list[Path] = typer.Option(..., "--data", "-d", help=DATA_HELP),
    more_data: list[Path] | None = MORE_DATA,
    out: Path = typer.Option(..., "--out", "-o", help="Artifact file to write (atomically)."),
    embedder: str = typer.Option(
        "minilm-l6-static-v2",
        help="Embedder name: minilm-l6-static-v2 (fast default), minilm-l6-int8, "
        "multilingual-e5-small-q4, openai:<model> (with --endpoint), hash-<dim>.",
    ),
    endpoint: str | None = typer.Option(None, help="Base URL of an OpenAI-compatible endpoint."),
    clusters: int = typer.Option(16, min=1, max=256, help="k-means clusters."),
    top_p: int = typer.Option(3, "--top-p", min=1, max=16, help="Nearest clusters blended."),
    temperature: float = typer.Option(0.1, min=1e-6, help="Softmax temperature of the blend."),
    alpha: float = typer.Option(0.7, min=0.0, max=1.0, help="Default quality weight."),
    seed: int = typer.Option(0, min=0, help="k-means seed (the fit is deterministic)."),
    shrinkage: float | None = typer.Option(
        None, min=0.0, help="Pseudo-samples of the global mean per cluster (default: tuned)."
    ),
    cache: bool = typer.Option(True, help="Cache embeddings under ~/.cache/shoal."),
    cascade: str | None = typer.Option(
        None,
        help="Also fit a cascade plan into the artifact for this signal: agreement, "
        "agreement-3, agreement-4, verifier, verifier+agreement, verifier+agreement-3, "
        "verifier+agreement-4 (needs every model's recorded answers in the data).",
    ),
    cascade_cost_weight: float = typer.Option(
        0.02,
        min=0.0,
        help="The cascade's quality/cost weight: accuracy given up per reference-model cost "
        "saved (0: quality only).",
    ),
    cascade_reference: str | None = typer.Option(
        None, help="The model costs are measured against (default: the most accurate one)."
    ),
    cascade_max_chain: int = typer.Option(
        4, min=2, help="Most models one request of the cascade may call, voters included."
    ),
    cascade_max_cost: float = typer.Option(
        2.0, min=0.0, help="Most a chain may cost with every call made, in reference costs."
    ),
) -> None:
    """Fit a router artifact from calibration data (and, with --cascade, a cascade plan)."""
    with _user_errors():
        from shoal.routing.artifact import artifact_checksum, read_artifact_info, write_artifact
        from shoal.routing.data import load_calibration
        from shoal.routing.embedders import make_embedder
        from shoal.routing.fit import DEFAULT_SHRINKAGE, fit_router

        data = _data_files(data, more_data)
        samples = load_calibration(data)
        emb = make_embedder(embedder, endpoint=endpoint)
        vectors = _embed(emb, samples, cache)
        blob = fit_router(
            samples,
            embedder=emb,
            clusters=clusters,
            top_p=top_p,
            temperature=temperature,
            alpha=alpha,
            seed=seed,
            shrinkage=DEFAULT_SHRINKAGE if shrinkage is None else shrinkage,
            embeddings=vectors,
        )
        plan_line = ""
        if cascade is not None:
            from shoal.routing.cascade_fit import fit_artifact_plan

            blob, plan = fit_artifact_plan(
                blob,
                samples,
                vectors,
                signal=cascade,
                cost_weight=cascade_cost_weight,
                reference=cascade_reference,
                max_chain=cascade_max_chain,
                max_cost=cascade_max_cost,
                fitted_on=", ".join(p.name for p in data),
            )
            escalating = sum(c.escalate is not None for c in plan.chains)
            plan_line = (
                f"; cascade ({plan.signal}, cost weight {plan.cost_weight:g}): "
                f"{escalating} of {len(plan.chains)} clusters escalate"
            )
        write_artifact(out, blob)
        info = read_artifact_info(blob)
        console.print(
            f"wrote {out}: {info.clusters} clusters x {len(info.models)} models, "
            f"{info.samples} samples, {len(blob) / 1024:.1f} KiB, {artifact_checksum(blob)}"
            + plan_line
        )


@app.command("eval")
def evaluate(
    artifact: Path = typer.Option(..., "--artifact", "-a", help="Router artifact file."),
    data: list[Path] = typer.Option(..., "--data", "-d", help=DATA_HELP),
    more_data: list[Path] | None = MORE_DATA,
    alpha: float | None = typer.Option(
        None, min=0.0, max=1.0, help="Quality weight (default: the artifact's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report on stdout."),
    plot: Path | None = typer.Option(None, help="Write the quality/cost frontier PNG here."),
    endpoint: str | None = typer.Option(None, help="Endpoint for an openai:<model> embedder."),
    cache: bool = typer.Option(True, help="Cache embeddings under ~/.cache/shoal."),
    reference: str | None = typer.Option(
        None,
        "--reference",
        help="A model of the data to measure savings against (what sending every query to it "
        "would cost), e.g. gpt-4-1106-preview.",
    ),
    cascade_train: list[Path] | None = typer.Option(
        None,
        "--cascade-train",
        help="Train file(s) with recorded answers: fit cascades on them (per signal, over a "
        "sweep of quality/cost weights) and evaluate them on --data, next to single-shot "
        "routing and every single model, in the report's 'cascade' block.",
    ),
    cascade_signals: str = typer.Option(
        "all", help="Comma-separated cascade signals to evaluate (default: all)."
    ),
    cascade_bootstrap: int = typer.Option(
        0,
        min=0,
        max=10000,
        help="Also report how far each cascade's cost at 99%% of the reference's accuracy "
        "moves over this many stratified resamples of the --data queries (0: not at all).",
    ),
) -> None:
    """Evaluate a router artifact against labelled data, with baselines and an alpha sweep."""
    with _user_errors():
        from shoal.routing.artifact import artifact_checksum
        from shoal.routing.data import load_calibration
        from shoal.routing.embedders import make_embedder
        from shoal.routing.evaluate import align_models, evaluate_router
        from shoal.routing.router import load_router

        blob = _read(artifact)
        from shoal.routing.artifact import read_artifact_info

        info = read_artifact_info(blob)
        emb = make_embedder(info.embedder, endpoint=endpoint)
        router = load_router(blob, embedder=emb)
        data = _data_files(data, more_data)
        samples = load_calibration(data)
        align_models(samples, router.models)
        vectors = _embed(emb, samples, cache)
        meta = {
            "artifact": {
                "path": str(artifact),
                "checksum": artifact_checksum(blob),
                "embedder": info.embedder,
                "clusters": info.clusters,
            },
            "data": [str(p) for p in data],
        }
        report = evaluate_router(router, samples, vectors, alpha=alpha, meta=meta)
        if reference is not None:
            from shoal.routing.savings import savings_report

            try:
                report["savings"] = savings_report(report, reference)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--reference") from None
        if cascade_train:
            from shoal.routing.cascade_fit import STRATEGIES, evaluate_cascades

            names = list(STRATEGIES) if cascade_signals == "all" else cascade_signals.split(",")
            unknown = [n for n in names if n not in STRATEGIES]
            if unknown:
                raise typer.BadParameter(
                    f"unknown cascade signals {unknown}; known: {', '.join(STRATEGIES)}",
                    param_hint="--cascade-signals",
                )
            train = load_calibration(cascade_train)
            align_models(train, router.models)
            report["cascade"] = evaluate_cascades(
                router,
                train,
                _embed(emb, train, cache),
                samples,
                vectors,
                reference=reference,
                routing=report["sweep"],
                strategies=names,
                bootstrap=cascade_bootstrap,
            )
        if plot is not None:
            from shoal.routing.plot import plot_cascade, plot_frontier

            title = f"{artifact.name} on {len(samples)} queries"
            if "cascade" in report:
                plot_cascade(report["cascade"], plot, title=title)
            else:
                plot_frontier(report, plot, title=title)
            console.print(f"wrote {plot}")
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        _print_report(report)


def _read(path: Path) -> bytes:
    from shoal.routing.artifact import ArtifactError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read router artifact {path}: {exc.strerror or exc}") from None


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    out = Console()
    r = report["router"]
    tasks = list(r["per_task"])
    table = Table(title=f"router at alpha={r['alpha']:g} on {report['samples']} queries")
    table.add_column("")
    table.add_column("accuracy %", justify="right")
    table.add_column("cost USD", justify="right")
    for t in tasks:
        table.add_column(t, justify="right")
    rows = [("router", r)] + [
        (k, report["baselines"][k]) for k in ("random", "best_single", "per_task_best", "oracle")
    ]
    for name, row in rows:
        label = f"{name} ({row['model']})" if "model" in row else name
        table.add_row(
            label,
            f"{100 * row['accuracy']:.2f}",
            f"{row['cost']:.4f}",
            *[f"{100 * row['per_task'][t]:.2f}" for t in tasks],
        )
    out.print(table)
    sweep = Table(title="quality/cost frontier (alpha sweep)")
    for col in ("alpha", "accuracy %", "cost USD"):
        sweep.add_column(col, justify="right")
    for p in report["frontier"]:
        sweep.add_row(f"{p['alpha']:g}", f"{100 * p['accuracy']:.2f}", f"{p['cost']:.4f}")
    out.print(sweep)
    reach = report.get("reaches_best_single")
    if reach and reach.get("cost_ratio") is not None:
        out.print(
            f"reaches the best single model's accuracy at alpha={reach['alpha']:g} for "
            f"{100 * reach['cost_ratio']:.1f}% of its cost"
        )
    saving = report.get("savings")
    if saving:
        table = Table(title=f"savings against {saving['reference']} "
                      f"({100 * saving['reference_accuracy']:.2f}% for "
                      f"${saving['reference_cost']:.3f})")  # fmt: skip
        for col in ("alpha", "accuracy %", "cost USD", "of reference", "saved"):
            table.add_column(col, justify="right")
        for p in saving["frontier"]:
            ratio, pct = p["ratio"] or 0.0, p["saved_percent"] or 0.0
            table.add_row(f"{p['alpha']:g}", f"{100 * p['accuracy']:.2f}", f"{p['spend']:.4f}",
                          f"{100 * ratio:.1f}%", f"{pct:.1f}%")  # fmt: skip
        out.print(table)
    share = ", ".join(f"{m}: {100 * s:.1f}%" for m, s in r["share"].items() if s > 0)
    out.print(f"router's share of queries: {share}")
    if "cascade" in report:
        _print_cascade(out, report["cascade"])


def _print_cascade(out: Console, block: dict[str, Any]) -> None:
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    table = Table(
        title=f"cascades against {block['reference']} ({100 * block['reference_accuracy']:.2f}% "
        f"for ${block['reference_cost']:.3f}): cost as a share of its cost"
    )
    for col in ("strategy", "best accuracy %", "cost at 99% of its accuracy",
                "cost at its accuracy", "chosen on train (99%)"):  # fmt: skip
        table.add_column(col, justify="right")
    for name, s in block["strategies"].items():
        chosen = (s.get("chosen_on_train") or {}).get("at_99")
        table.add_row(
            name,
            f"{100 * s['best_accuracy']:.2f}",
            pct(s["cost_fraction_at_99"]),
            pct(s["cost_fraction_at_reference"]),
            "-"
            if not chosen
            else f"{100 * chosen['accuracy']:.2f}% at {pct(chosen['cost_fraction'])}",
        )
    out.print(table)


@app.command()
def learn(
    artifact: Path = typer.Option(..., "--artifact", "-a", help="Router artifact to start from."),
    feedback: list[Path] = typer.Option(
        ..., "--feedback", "-f", help="Labelled files streamed as requests with bandit feedback."
    ),
    data: list[Path] = typer.Option(..., "--data", "-d", help="Held-out evaluation file(s)."),
    out: Path = typer.Option(..., "--out", "-o", help="Learned artifact to write (atomically)."),
    prior_weight: float = typer.Option(
        8.0, min=0.0, help="Feedback events the calibration prior counts as, per cluster and model."
    ),
    explore: str = typer.Option("thompson", help="Exploration: thompson, epsilon or greedy."),
    epsilon: float = typer.Option(0.05, min=0.0, max=1.0, help="Share explored by epsilon."),
    batch: int = typer.Option(50, min=1, help="Feedback events between two refits."),
    events: int | None = typer.Option(None, min=0, help="Stream at most this many events."),
    alpha: float | None = typer.Option(None, min=0.0, max=1.0, help="Quality weight."),
    seed: int = typer.Option(0, min=0, help="Seed of the stream order and exploration."),
    variants: bool = typer.Option(False, help="Also report per-query and finer-cluster estimates."),
    pessimism: float = typer.Option(
        0.0, min=0.0, help="Lower-confidence-bound weight of the refit tables (0: posterior mean)."
    ),
    guard: bool = typer.Option(
        True, help="Adopt a refit only when the off-policy estimate says it routes better."
    ),
    holdout: float = typer.Option(
        0.3, min=0.0, max=0.9, help="Share of the feedback held out of the refit for the guard."
    ),
    guard_every: int = typer.Option(500, min=1, help="Feedback events between two guard looks."),
    ab: float = typer.Option(
        0.25,
        min=0.0,
        max=0.5,
        help="Under the guard, share of requests sent to the refit's choice (and as many to "
        "the tables in use): the guard's A/B comparison.",
    ),
    margin: float = typer.Option(
        0.0, help="Accuracy the guard's lower bound must gain to adopt (0.01 = one point)."
    ),
    plot: Path | None = typer.Option(None, help="Write the learning curve PNG here."),
    endpoint: str | None = typer.Option(None, help="Endpoint for an openai:<model> embedder."),
    cache: bool = typer.Option(True, help="Cache embeddings under ~/.cache/shoal."),
) -> None:
    """Replay labelled data as bandit feedback from an artifact; write the learned artifact.

    The last line of the output is one JSON object with accuracy_before, accuracy_after,
    events and cost_per_query_after (accuracy: mean of per-task accuracies on --data), and
    offpolicy: the off-policy estimates of the learned router on the held-out feedback next
    to its true value there."""
    with _user_errors():
        from datetime import UTC, datetime

        from shoal.routing.artifact import artifact_checksum, read_artifact_info, write_artifact
        from shoal.routing.data import load_calibration
        from shoal.routing.embedders import make_embedder
        from shoal.routing.learn import DEFAULT_CHECKPOINTS, labelled
        from shoal.routing.learn import learn as run_learn
        from shoal.routing.replay import ReplayConfig

        if explore not in ("thompson", "epsilon", "greedy"):
            raise ValueError(f"--explore must be thompson, epsilon or greedy, not {explore!r}")
        blob = _read(artifact)
        info = read_artifact_info(blob)
        emb = make_embedder(info.embedder, endpoint=endpoint)
        stream_samples = load_calibration(feedback)
        eval_samples = load_calibration(data)
        if events is not None:
            import random

            random.Random(seed).shuffle(stream_samples)
            stream_samples = stream_samples[:events]
        stream = labelled(stream_samples, _embed(emb, stream_samples, cache), info.models)
        held = labelled(eval_samples, _embed(emb, eval_samples, cache), info.models)
        cfg = ReplayConfig(
            prior_weight=prior_weight,
            explore=explore,  # type: ignore[arg-type]
            epsilon=epsilon,
            batch=batch,
            seed=seed,
            alpha=alpha,
            checkpoints=DEFAULT_CHECKPOINTS,
            pessimism=pessimism,
            guard=guard,
            holdout=holdout,
            guard_every=guard_every,
            margin=margin,
            ab=ab,
        )
        outcome = run_learn(blob, stream, held, cfg, now=datetime.now(UTC), variants=variants)
        write_artifact(out, outcome.artifact)
        report = dict(
            outcome.report, artifact=str(out), checksum=artifact_checksum(outcome.artifact)
        )
        if plot is not None:
            from shoal.routing.plot import plot_learning

            plot_learning(report, plot, title=f"{artifact.name}: bandit feedback")
            console.print(f"wrote {plot}")
    for p in report["curve"]:
        print(
            f"{p['events']:>7} events: accuracy {100 * p['accuracy']:.2f}%, "
            f"cost/query {p['cost_per_query']:.6f}"
        )
    for look in report["guard_looks"]:
        print(
            f"guard at {look['events']:>6} events: estimated change {100 * look['estimate']:+.2f} "
            f"(lower bound {100 * look['lower']:+.2f}), true {100 * look['true_difference']:+.2f}"
            f" on {look['held_out']} held-out events: "
            + ("adopted" if look["adopted"] else "kept in shadow")
        )
    op = report["offpolicy"]
    if op:
        where = "logged" if op["in_sample"] else "held-out"
        est = ", ".join(f"{k.upper()} {100 * op[k]['after']:.2f}%" for k in ("dr", "snips", "ips"))
        print(
            f"off-policy estimate of the learned router on {op['events']} {where} events: "
            f"{est}, naive {100 * op['naive_after']:.2f}%; true {100 * op['true_after']:.2f}%"
        )
    for name, v in report.get("variants", {}).items():
        print(
            f"{name:>12}: accuracy {100 * v['accuracy']:.2f}%, cost/query {v['cost_per_query']:.6f}"
        )
    print(json.dumps(report, sort_keys=True))


@app.command()
def info(artifact: Path = typer.Argument(..., help="Router artifact file.")) -> None:
    """Print an artifact's header (models, clusters, embedder, checksum) as JSON."""
    with _user_errors():
        from dataclasses import asdict

        from shoal.routing.artifact import read_artifact_info

        meta = asdict(read_artifact_info(_read(artifact)))
    meta["fitted_at"] = meta["fitted_at"].isoformat()
    sys.stdout.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")


@app.command()
def prepare(
    embedder: str = typer.Option("minilm-l6-static-v2", help="Embedder to make ready."),
) -> None:
    """Build derived embedder files ahead of time (the distilled static table), e.g. in an image."""
    with _user_errors():
        import time

        from shoal.routing.embedders import make_embedder

        started = time.perf_counter()
        emb = make_embedder(embedder)
        emb.embed(["warm-up"])
        console.print(f"{emb.name} ready in {time.perf_counter() - started:.1f} s")
