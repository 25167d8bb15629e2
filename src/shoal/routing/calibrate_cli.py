"""``shoal calibrate``: run a labelled prompt set through every model of a fleet endpoint and
write Shoal calibration JSONL (the command's surface; the work is :mod:`shoal.routing.calibrate`).

Exit status 0 when every call was answered, 1 when some errored or timed out (they are
listed apart in the summary and the prompts concerned left out of the output; run again to
retry them), 2 on bad input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def _fleet_models(path: Path) -> tuple[list[str], dict[str, Any]]:
    import yaml

    from shoal.api.v1alpha1 import ModelFleet
    from shoal.routing.pricing import fleet_prices

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    fleets = [d for d in docs if d.get("kind") == "ModelFleet"]
    if len(fleets) != 1:
        raise ValueError(f"{path}: expected exactly one ModelFleet, found {len(fleets)}")
    spec = ModelFleet.model_validate(fleets[0]).spec
    return [m.name for m in spec.models], dict(fleet_prices(spec))


def _endpoint_models(base_url: str, api_key: str | None) -> list[str]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=30)
        r.raise_for_status()
        return [str(m["id"]) for m in r.json()["data"] if m.get("id") != "auto"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot list the models of {base_url}: {exc}") from None


def calibrate(
    endpoint: str = typer.Option(
        ..., "--endpoint", "-e", help="Fleet base URL, e.g. http://127.0.0.1:8000/v1."
    ),
    prompts: Path = typer.Option(..., "--prompts", "-p", help="Labelled prompt set (JSONL)."),
    out: Path = typer.Option(..., "--out", "-o", help="Calibration JSONL to write."),
    fleet: Path | None = typer.Option(
        None, "--fleet", "-f", help="Fleet file: models and tier prices."
    ),
    models: str | None = typer.Option(None, help="Comma-separated models (default: the fleet's)."),
    token_price: list[str] = typer.Option(
        [], "--token-price", help="MODEL=IN:OUT USD per million tokens."
    ),
    concurrency: int = typer.Option(4, min=1, max=256, help="Calls in flight at once."),
    timeout: float = typer.Option(120.0, min=0.1, help="Seconds to wait for one answer."),
    max_tokens: int = typer.Option(256, min=1, help="max_tokens of each call."),
    restart: bool = typer.Option(False, help="Ignore an existing calls file and start over."),
) -> None:
    """Call every model of a fleet endpoint on labelled prompts, grade, price, write calibration.

    The API key, if the endpoint needs one, is read from $SHOAL_API_KEY or $OPENAI_API_KEY."""
    import asyncio

    from shoal.routing.artifact import ArtifactError
    from shoal.routing.calibrate import calibration_lines, parse_prompts, run_calibration, summarise
    from shoal.routing.cli import _progress
    from shoal.routing.data import CalibrationError
    from shoal.routing.pricing import merge_prices, parse_token_price

    api_key = os.environ.get("SHOAL_API_KEY") or os.environ.get("OPENAI_API_KEY")
    calls = out.with_name(out.name + ".calls.jsonl")
    try:
        labelled = parse_prompts(prompts.read_text(), source=str(prompts))
        names, prices = _fleet_models(fleet) if fleet else ([], {})
        if models:
            names = [m.strip() for m in models.split(",") if m.strip()]
        if not names:
            names = _endpoint_models(endpoint, api_key)
        prices = merge_prices(prices, dict(parse_token_price(t) for t in token_price))
        judges = {p.judge for p in labelled if p.judge} - set(names)
        if judges and fleet is not None:
            fleet_names, _ = _fleet_models(fleet)
            if missing := judges - set(fleet_names):
                raise ValueError(f"judge models not in the fleet: {', '.join(sorted(missing))}")
        if restart:
            calls.unlink(missing_ok=True)
        with _progress(f"calibrating {len(names)} models on {len(labelled)} prompts") as update:
            records = asyncio.run(
                run_calibration(
                    endpoint,
                    labelled,
                    names,
                    prices,
                    calls_path=calls,
                    concurrency=concurrency,
                    timeout=timeout,
                    max_tokens=max_tokens,
                    api_key=api_key,
                    progress=update,
                )
            )
    except (OSError, CalibrationError, ArtifactError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    with_costs = all(n in prices for n in names)
    lines, incomplete = calibration_lines(labelled, names, records, with_costs=with_costs)
    from shoal.routing.artifact import write_artifact

    write_artifact(out, ("\n".join(lines) + "\n").encode() if lines else b"")
    rows = summarise(labelled, names, records)
    _print_summary(rows)
    failed = sum(r["errors"] + r["timeouts"] for r in rows)
    console.print(
        f"wrote {out}: {len(lines)} prompts x {len(names)} models"
        + (
            f"; {incomplete} prompts left out (an error or timeout; run again to retry)"
            if incomplete
            else ""
        )
        + f"; calls in {calls}"
    )
    print(
        json.dumps(
            {
                "prompts": len(lines),
                "incomplete": incomplete,
                "failed_calls": failed,
                "models": names,
                "out": str(out),
            }
        )
    )
    if failed:
        raise typer.Exit(1)


def _print_summary(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="calibration by model and task")
    for col in (
        "model",
        "task",
        "answered",
        "mean score",
        "errors",
        "timeouts",
        "mean s",
        "cost USD",
    ):
        table.add_column(col, justify="left" if col in ("model", "task") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            r["task"],
            str(r["answered"]),
            "-" if r["score"] is None else f"{r['score']:.3f}",
            str(r["errors"]),
            str(r["timeouts"]),
            "-" if r["seconds"] is None else f"{r['seconds']:.3f}",
            f"{r['cost']:.6f}",
        )
    Console(stderr=True).print(table)
