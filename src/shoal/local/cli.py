"""``shoal up`` and ``shoal down``: thin typer commands over :mod:`shoal.local.runner`.

Registered on the main ``shoal`` command by :mod:`shoal.cli`. Nothing heavy is imported at
module level (no Ray), so ``shoal --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shoal.local.timings import UpTimings

console = Console(stderr=True)
out = Console()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _progress_table(args: Any, status: dict[str, Any], elapsed: float) -> Table:
    from shoal.contract import INGRESS_DEPLOYMENT, deployment_plans

    phase = status.get("phase", "starting")
    table = Table(title=f"fleet {args.fleet_name}: {phase} ({elapsed:.0f}s)", title_justify="left")
    table.add_column("deployment")
    table.add_column("engine")
    table.add_column("state")
    table.add_column("replicas")
    deps = status.get("deployments", {})
    rows = [(INGRESS_DEPLOYMENT, "router")] + [
        (p.deployment_name, p.engine) for p in deployment_plans(args)
    ]
    for name, engine in rows:
        d = deps.get(name)
        if d is None:
            state = "waiting for Ray" if phase.startswith("starting") else "pending"
            replicas = ""
        else:
            state = d["status"]
            replicas = ", ".join(f"{n} {s.lower()}" for s, n in d["replicas"].items()) or "-"
        colour = {"HEALTHY": "green", "UNHEALTHY": "red", "DEPLOY_FAILED": "red"}.get(
            state, "yellow"
        )
        table.add_row(name, engine, f"[{colour}]{state}[/{colour}]", replicas)
    return table


CURL_QUESTION = "Write a Python function that sorts a list"


def _examples(base_url: str, metrics_port: int, host: str) -> str:
    return f"""
curl
  curl -si {base_url}/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "{CURL_QUESTION}"}}]}}'

Python (openai)
  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="unused")
  r = client.chat.completions.with_raw_response.create(
      model="auto", messages=[{{"role": "user", "content": "What is 12 squared?"}}])
  print(r.headers["x-shoal-model"], r.parse().choices[0].message.content)

  `model: "auto"` routes through the learned router; a model name bypasses it.
  Metrics (Prometheus): http://{host}:{metrics_port}/metrics   Stop: {down_command()}
"""


def _mark_progress(timings: UpTimings, status: dict[str, Any]) -> None:
    """Mark the moments ``status.json`` shows: Ray and Serve up (the daemon is deploying),
    each deployment healthy, the whole application running."""
    phase = status.get("phase", "")
    if phase in ("deploying", "running"):
        timings.mark("ray and serve")
    for name, d in status.get("deployments", {}).items():
        if d.get("status") == "HEALTHY":
            timings.mark(f"{name} healthy")
    if phase == "running":
        timings.mark("running")


def _router_ready(status: dict[str, Any]) -> bool:
    """The router's deployment is healthy (or the whole application runs)."""
    from shoal.contract import INGRESS_DEPLOYMENT

    if status.get("phase") == "running":
        return True
    router = status.get("deployments", {}).get(INGRESS_DEPLOYMENT, {})
    return bool(router.get("status") == "HEALTHY")


def _still_loading(args: Any, status: dict[str, Any]) -> list[str]:
    """The model deployments not healthy yet (none once the application runs)."""
    from shoal.contract import deployment_plans

    if status.get("phase") == "running":
        return []
    deps = status.get("deployments", {})
    return [
        p.deployment_name
        for p in deployment_plans(args)
        if deps.get(p.deployment_name, {}).get("status") != "HEALTHY"
    ]


def down_command() -> str:
    """How the caller's shell runs ``shoal down``: ``make down`` under make, ``shoal down``
    where ``shoal`` on PATH is this very program, else this program's own path."""
    if os.environ.get("MAKELEVEL"):
        return "make down"
    me = Path(sys.argv[0]).resolve()
    if me.name != "shoal":
        return f"{sys.executable} -m shoal.cli down"
    found = shutil.which("shoal")
    if found and Path(found).resolve() == me:
        return "shoal down"
    rel = os.path.relpath(me)
    return f"{rel if not rel.startswith('..') else me} down"


def up(
    file: Path = typer.Option(
        Path("examples/quickstart.yaml"),
        "--file",
        "-f",
        help="Fleet file (ModelFleet, "
        "RoutingPolicy and calibration ConfigMap, as for kubectl apply).",
    ),
    fleet: str | None = typer.Option(None, "--fleet", help="ModelFleet to run, if several."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the endpoint listens on."),
    port: int = typer.Option(8000, "--port", help="Port of the OpenAI-compatible endpoint."),
    metrics_port: int = typer.Option(8080, "--metrics-port", help="Prometheus metrics port."),
    foreground: bool = typer.Option(
        False, "--foreground", help="Stay attached; Ctrl-C stops the fleet."
    ),
    timeout: float = typer.Option(900, "--timeout", help="Seconds to wait for the fleet."),
) -> None:
    """Run a fleet locally on CPU: local Ray, the router, the models; no cluster needed."""
    from shoal.local import runner as local

    started = time.monotonic()
    timings = UpTimings(started)
    folder = local.state_dir()
    running = local.DaemonInfo.read(folder)
    if running is not None and local.pid_alive(running.pid):
        console.print(
            f"[red]a fleet ({running.fleet}) is already running at {running.base_url}[/red]; "
            f"run `{down_command()}` first"
        )
        raise typer.Exit(1)
    for p in (port, metrics_port):
        if not _port_free(host, p):
            console.print(
                f"[red]port {p} on {host} is in use[/red]; pick another with --port/--metrics-port"
            )
            raise typer.Exit(1)
    try:
        with console.status(f"reading {file} and fitting the router"):
            args = local.prepare(file, folder, fleet, log=lambda m: console.print(m))
    except (ValueError, OSError) as exc:
        console.print(f"[red]cannot run {file}:[/red] {exc}")
        raise typer.Exit(1) from None
    timings.mark("router")
    proc = local.start_daemon(folder, host, port, metrics_port)
    info = local.DaemonInfo(proc.pid, args.fleet_name, host, port, metrics_port, time.time())
    info.write(folder)
    question: local.FirstQuestion | None = None
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while True:
                status = local.read_status(folder)
                _mark_progress(timings, status)
                live.update(_progress_table(args, status, time.monotonic() - started))
                if question is None and _router_ready(status):
                    # Ask now: the answer comes from whichever model the router picks, as
                    # soon as that one is up, while the others may still be loading.
                    left = max(timeout - (time.monotonic() - started), 1.0)
                    question = local.FirstQuestion(info.base_url, timeout=left)
                if question is not None and question.done():
                    break
                if status.get("phase") == "failed" or proc.poll() is not None:
                    raise local.UpError(f"the fleet failed to start; see {folder / 'daemon.log'}")
                if time.monotonic() - started > timeout:
                    raise local.UpError(f"the fleet was not ready after {timeout:.0f}s")
                time.sleep(0.25)
        assert question is not None  # the loop ends only once it has answered
        model, text = question.result()
        timings.mark("first answer")
        if args.router_artifact_path is not None:
            local.start_table_distillation(folder)
        loading = _still_loading(args, local.read_status(folder))
    except (local.UpError, KeyboardInterrupt) as exc:
        console.print(f"[red]{exc or 'interrupted'}[/red]")
        tail = (folder / "daemon.log").read_text(errors="replace").splitlines()[-15:]
        console.print("\n".join(tail), markup=False, highlight=False)
        local.stop_daemon(folder)
        raise typer.Exit(1) from None
    elapsed = time.monotonic() - started
    out.print(
        f"\n[bold green]fleet {args.fleet_name} is up[/bold green] at "
        f"[bold]{info.base_url}[/bold] ({len(args.fleet.models)} models, "
        f"{args.policy.strategy} routing)"
    )
    out.print(f"first answer after {elapsed:.1f}s, from [bold]{model}[/bold]: {text}")
    if loading:
        out.print(f"still loading: {', '.join(loading)} (requests routed there wait for it)")
    out.print(f"[dim]seconds since start: {timings.summary()}[/dim]")
    with contextlib.suppress(OSError):
        timings.write(folder)
    print(_examples(info.base_url, metrics_port, host))  # plain: copy-paste safe, no wrapping
    if foreground:
        try:
            proc.wait()
        except KeyboardInterrupt:
            with console.status("stopping"):
                local.stop_daemon(folder)


def down() -> None:
    """Stop the fleet that `shoal up` started."""
    from shoal.local import runner as local

    folder = local.state_dir()
    with console.status("stopping the fleet (Ray Serve and its local Ray)"):
        info = local.stop_daemon(folder)
    if info is None:
        console.print("no fleet is running")
        return
    console.print(f"fleet {info.fleet} stopped")
