"""The ``shoal`` command: one entry point for platform teams, SREs and newcomers.

Sub-commands stay thin: they parse arguments, call the library, and print. Heavy imports
(Ray, ONNX Runtime, kopf) happen inside the commands that need them, so ``shoal --help`` and
``shoal crds`` stay fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from shoal import __version__

app = typer.Typer(
    name="shoal",
    help="Serve a fleet of small specialist language models behind one routed endpoint.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

DEFAULT_CRD_DIR = Path("crds")


@app.command()
def version() -> None:
    """Print Shoal's version."""
    print(__version__)


def _require_devtools(command: str) -> None:
    """Stop with a clear word where the development tooling is not installed (the images)."""
    import importlib.util

    if importlib.util.find_spec("shoal.devtools") is None:
        console.print(
            f"[red]`shoal {command}` is a development command:[/red] run it from a source "
            "checkout (`make setup`); the container images ship without shoal.devtools."
        )
        raise typer.Exit(2)


@app.command()
def crds(
    out: Path = typer.Option(DEFAULT_CRD_DIR, "--out", "-o", help="Folder to write CRDs to."),
    check: bool = typer.Option(
        False, "--check", help="Only check that the files match the models; exit 1 if not."
    ),
    chart: Path | None = typer.Option(
        None,
        "--chart",
        help="Helm chart that gets templated copies (default: OUT/../charts/shoal).",
    ),
) -> None:
    """Generate the CRD YAML of the shoal.dev API from its Pydantic models (and the chart's)."""
    _require_devtools("crds")
    from shoal.api.v1alpha1.crd import stale_crds, write_crds
    from shoal.devtools.chart import CHART_DIR
    from shoal.devtools.chart.crds import stale_chart_crds, write_chart_crds

    chart = out.parent / CHART_DIR if chart is None else chart
    if check:
        stale = [f"{out}/{n}" for n in stale_crds(out)]
        stale += [f"{chart}/templates/crds/{n}" for n in stale_chart_crds(chart)]
        if stale:
            console.print(
                f"[red]out of date:[/red] {', '.join(stale)}. Run `shoal crds` "
                "and commit the result."
            )
            raise typer.Exit(1)
        console.print(f"CRDs in {out}/ and {chart}/ match the API models.")
        return
    for path in [*write_crds(out), *write_chart_crds(chart)]:
        console.print(f"wrote {path}")


@app.command("engine-args")
def engine_args(
    check: bool = typer.Option(
        False, "--check", help="Only check the committed list against vLLM; exit 1 if it drifts."
    ),
) -> None:
    """Generate the list of vLLM engine arguments a fleet's engineArgs may set, from vLLM."""
    _require_devtools("engine-args")
    from shoal.devtools.engine_args import MODULE_PATH, stale, write

    if check:
        if stale():
            console.print(
                f"[red]out of date:[/red] {MODULE_PATH}. Run `shoal engine-args` and commit it."
            )
            raise typer.Exit(1)
        console.print(f"{MODULE_PATH} matches the installed vLLM.")
        return
    console.print(f"wrote {write()}")


@app.command("chart")
def chart_files(
    chart: Path = typer.Option(Path("charts/shoal"), "--chart", help="The Helm chart's folder."),
    check: bool = typer.Option(False, "--check", help="Only check for drift; exit 1 if any."),
) -> None:
    """Generate the Helm chart's values.schema.json, dashboard and CRD templates from code."""
    _require_devtools("chart")
    from shoal.devtools.chart.generate import stale, write_all

    if check:
        if out_of_date := stale(chart):
            console.print(
                f"[red]out of date in {chart}/:[/red] {', '.join(out_of_date)}. "
                "Run `shoal chart` and commit the result."
            )
            raise typer.Exit(1)
        console.print(f"generated files in {chart}/ are up to date.")
        return
    for path in write_all(chart):
        console.print(f"wrote {path}")


@app.command()
def render(
    files: list[Path] = typer.Option(
        ...,
        "--file",
        "-f",
        help="YAML file of fleets, policies and calibration ConfigMaps (repeat for more).",
    ),
    namespace: str = typer.Option(
        "default", "--namespace", "-n", help="Namespace of objects that name none."
    ),
    pod_templates: bool = typer.Option(
        False,
        "--pod-templates",
        help="Also print each Ray head and worker pod template as a Pod (for scanners).",
    ),
    engine_args: bool = typer.Option(
        False,
        "--engine-args",
        help="Print instead what each model's engine is given (vLLM's engine_kwargs with "
        "quantization and speculative_config; llama.cpp's arguments).",
    ),
) -> None:
    """Print, as YAML, the objects the operator would apply for the fleets in the files.

    A cluster policy's router is fitted from its calibration ConfigMap (in one of the files),
    as `shoal up` does. The operator's default settings apply (SHOAL_* variables override
    them).
    """
    from shoal.render import RenderError, engine_arguments, read_files, render_files

    try:
        if engine_args:
            docs = engine_arguments(read_files(files))
        else:
            docs = render_files(files, namespace=namespace, pod_templates=pod_templates)
    except RenderError as exc:
        console.print(f"[red]cannot render:[/red] {exc}")
        raise typer.Exit(1) from exc
    import yaml

    print(yaml.safe_dump_all(docs, sort_keys=False, width=1000), end="")


@app.command()
def usage(
    namespace: str | None = typer.Option(
        "default", "--namespace", "-n", help="Namespace of the tenants."
    ),
    all_namespaces: bool = typer.Option(
        False, "--all-namespaces", "-A", help="Tenants of every namespace."
    ),
    fleet: str | None = typer.Option(None, "--fleet", help="Only the tenants of this fleet."),
    prometheus: str | None = typer.Option(
        None,
        "--prometheus",
        help="Read the last hour from this Prometheus (base URL) instead of the Tenants' "
        "status (which the operator refreshes every minute).",
    ),
) -> None:
    """Print what each fleet and tenant spent in the last hour (USD), the savings against the
    fleet's reference, and each tenant's requests, tokens and budget."""
    from datetime import UTC, datetime

    from rich.table import Table

    from shoal.operator.usage import (
        fleet_rows_with_prometheus,
        list_fleets,
        list_tenants,
        prometheus_usage,
        rows_from_fleets,
        rows_from_tenants,
        saved,
        with_prometheus,
    )

    where = None if all_namespaces else namespace
    try:
        fleet_bodies = [
            b for b in list_fleets(where) if not fleet or b["metadata"]["name"] == fleet
        ]
        rows = rows_from_tenants(list_tenants(where), fleet)
        fleet_rows = rows_from_fleets(fleet_bodies, fleet)
        if prometheus:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            fleets = {(r.namespace, r.fleet) for r in rows}
            rows = with_prometheus(rows, prometheus_usage(prometheus, fleets), now)
            fleet_rows = fleet_rows_with_prometheus(prometheus, fleet_bodies, now)
    except Exception as exc:  # no cluster, no RBAC, no Prometheus: say which
        console.print(f"[red]cannot read usage:[/red] {exc}")
        raise typer.Exit(1) from exc
    if fleet_rows:
        ftable = Table(title="Fleets' spend in the last hour")
        fnumbers = ("USD", "EXTERNAL USD", "REFERENCE USD", "SAVED")
        for col in ("NAMESPACE", "FLEET", *fnumbers, "UPDATED"):
            ftable.add_column(col, justify="right" if col in fnumbers else "left")
        for f in fleet_rows:
            ftable.add_row(f.namespace, f.fleet, f"{f.cost_usd:.4f}", f"{f.external_usd:.4f}",
                           f"{f.reference_usd:.4f}" if f.reference_usd is not None else "-",
                           saved(f.savings), f.updated)  # fmt: skip
        Console().print(ftable)
    if not rows:
        console.print("no tenants found")
        return
    table = Table(title="Tenants' use in the last hour")
    numbers = ("KEYS", "REQUESTS", "TOKENS", "USD", "BUDGET/H", "USED", "REFERENCE USD", "SAVED")
    for col in ("NAMESPACE", "FLEET", "TENANT", "READY", *numbers, "UPDATED"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in rows:
        table.add_row(r.namespace, r.fleet, r.tenant, r.ready, str(r.keys), f"{r.requests:,}",
                      f"{r.tokens:,}", f"{r.cost_usd:.4f}",
                      f"{r.budget_usd:.2f}" if r.budget_usd is not None else "-",
                      r.budget_used,
                      f"{r.reference_usd:.4f}" if r.reference_usd is not None else "-",
                      saved(r.savings), r.updated)  # fmt: skip
    Console().print(table)


tenant_app = typer.Typer(help="Tenants' API keys.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")


@tenant_app.command("key")
def tenant_key() -> None:
    """Print a new random API key (48 characters) to put into a tenant's Secret."""
    import secrets

    print(secrets.token_urlsafe(36))


# `shoal router ...`: fit, evaluate and inspect the router (imports stay lazy inside it).
from shoal.routing.cli import app as router_app  # noqa: E402

app.add_typer(router_app, name="router")

# `shoal calibrate`: calibration data from running a fleet's models on labelled prompts.
from shoal.routing.calibrate_cli import calibrate  # noqa: E402

app.command("calibrate")(calibrate)


# `shoal up` / `shoal down`: the fleet locally on CPU (Ray is imported only when they run).
from shoal.local.cli import down as serving_down  # noqa: E402
from shoal.local.cli import up as serving_up  # noqa: E402

app.command("up")(serving_up)
app.command("down")(serving_down)


# `shoal sim`: the autoscaling study in the fleet simulator (its imports stay lazy inside it).
from shoal.sim.cli import sim  # noqa: E402

app.command("sim")(sim)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
