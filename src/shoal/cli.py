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


@app.command()
def crds(
    out: Path = typer.Option(DEFAULT_CRD_DIR, "--out", "-o", help="Folder to write CRDs to."),
    check: bool = typer.Option(
        False, "--check", help="Only check that the files match the models; exit 1 if not."
    ),
) -> None:
    """Generate the CRD YAML of the shoal.dev API from its Pydantic models."""
    from shoal.api.v1alpha1.crd import stale_crds, write_crds

    if check:
        stale = stale_crds(out)
        if stale:
            console.print(
                f"[red]out of date in {out}/:[/red] {', '.join(stale)}. Run `shoal crds` "
                "and commit the result."
            )
            raise typer.Exit(1)
        console.print(f"CRDs in {out}/ match the API models.")
        return
    for path in write_crds(out):
        console.print(f"wrote {path}")


# `shoal router ...`: fit, evaluate and inspect the router (imports stay lazy inside it).
from shoal.routing.cli import app as router_app  # noqa: E402

app.add_typer(router_app, name="router")


# `shoal up` / `shoal down`: the fleet locally on CPU (Ray is imported only when they run).
from shoal.serving.cli import down as serving_down  # noqa: E402
from shoal.serving.cli import up as serving_up  # noqa: E402

app.command("up")(serving_up)
app.command("down")(serving_down)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
