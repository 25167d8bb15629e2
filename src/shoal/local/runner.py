"""``shoal up`` / ``shoal down``: the fleet on a laptop, no cluster.

``shoal up -f fleet.yaml`` reads the fleet file (:mod:`shoal.local.manifests`), fits the
router from the policy's calibration ConfigMap, and starts a *fleet daemon*: a background
process (``python -m shoal.local.runner daemon``) that starts its own local Ray instance,
deploys :func:`shoal.serving.app.build_app` with Ray Serve and writes its progress to a
state folder. ``shoal up`` shows that progress while the models load, asks the fleet a first
question, and prints the endpoint with copy-paste examples. ``shoal down`` asks the daemon
to stop; it shuts Ray Serve and its Ray instance down and exits.

State lives in ``$SHOAL_STATE_DIR`` or ``~/.cache/shoal/run``: ``daemon.json`` (pid, ports),
``status.json`` (deployment states), ``args.json``, ``router.bin`` and ``daemon.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shoal.contract import BuildArgs
from shoal.local.ray_env import local_ray_env

DEFAULT_PORT = 8000
DEFAULT_METRICS_PORT = 8080


def state_dir() -> Path:
    """Where the running fleet's state lives."""
    root = os.environ.get("SHOAL_STATE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "shoal", "run"
    )
    return Path(root)


@dataclass
class DaemonInfo:
    """What ``shoal up`` records about the fleet daemon (``daemon.json``)."""

    pid: int
    fleet: str
    host: str
    port: int
    metrics_port: int
    started: float

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @staticmethod
    def read(folder: Path) -> DaemonInfo | None:
        try:
            return DaemonInfo(**json.loads((folder / "daemon.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, folder: Path) -> None:
        _write_json(folder / "daemon.json", asdict(self))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the daemon --------------------------------------------------------------------------


def logical_cpus(args: BuildArgs) -> int:
    """Logical CPUs for the local Ray instance: enough to place every replica (Ray's CPU
    count is for placement; llama.cpp threads are set separately)."""
    from shoal.contract import deployment_plans

    need = args.ingress.num_cpus * args.ingress.num_replicas
    for plan in deployment_plans(args):
        need += float(plan.ray_actor_options.get("num_cpus", 1)) * plan.replicas.max
    return max(os.cpu_count() or 1, int(need) + 2)


def status_snapshot(app_name: str) -> dict[str, Any]:
    """Ray Serve's view of the application, as plain JSON."""
    from ray import serve

    status = serve.status()
    app = status.applications.get(app_name)
    if app is None:
        return {"app": "NOT_STARTED", "deployments": {}}
    return {
        "app": str(app.status.value if hasattr(app.status, "value") else app.status),
        "message": app.message,
        "deployments": {
            name: {
                "status": str(d.status.value if hasattr(d.status, "value") else d.status),
                "replicas": {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()},
                "message": d.message,
            }
            for name, d in app.deployments.items()
        },
    }


def run_daemon(folder: Path, host: str, port: int, metrics_port: int) -> int:
    """Start Ray and the fleet, keep them up until SIGTERM/SIGINT, then stop both."""
    import ray
    from ray import serve

    from shoal.serving.app import build_app

    args = BuildArgs.parse(json.loads((folder / "args.json").read_text()))
    stop = threading.Event()
    status_path = folder / "status.json"
    _write_json(status_path, {"phase": "starting-ray", "deployments": {}})
    with local_ray_env():
        ray.init(
            address="local",
            num_cpus=logical_cpus(args),
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            _metrics_export_port=metrics_port,
            namespace="shoal",
            log_to_driver=False,
        )
    # After ray.init, which installs handlers of its own: stop gracefully on either signal.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        _write_json(status_path, {"phase": "deploying", "deployments": {}})
        serve.run_many(
            [serve.RunTarget(build_app(args), name=args.fleet_name, route_prefix="/")],
            wait_for_applications_running=False,
        )
        phase = "deploying"
        while not stop.is_set():
            snap = status_snapshot(args.fleet_name)
            if snap["app"] == "RUNNING":
                phase = "running"
            elif snap["app"] == "DEPLOY_FAILED":
                phase = "failed"
            _write_json(status_path, {"phase": phase, **snap})
            stop.wait(0.5 if phase == "deploying" else 2.0)
    finally:
        _write_json(status_path, {"phase": "stopping", "deployments": {}})
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            _write_json(status_path, {"phase": "stopped", "deployments": {}})
    return 0


# --- the commands ------------------------------------------------------------------------


class UpError(RuntimeError):
    """``shoal up`` cannot go on; the message says why and what to do."""


@dataclass
class UpResult:
    info: DaemonInfo
    seconds_to_first_answer: float
    first_answer: str
    first_model: str
    models: list[str]


def prepare(
    fleet_file: Path, folder: Path, fleet_name: str | None = None, log: Any = print
) -> BuildArgs:
    """Parse the file, fit the router, and write ``args.json`` (and ``router.bin``)."""
    from shoal.local.manifests import fit_local_router, load_fleet_file

    manifests = load_fleet_file(fleet_file, fleet_name)
    folder.mkdir(parents=True, exist_ok=True)
    artifact_path: str | None = None
    if manifests.policy.spec.strategy == "cluster":
        embedder_name = None
        if manifests.policy.spec.embedder.type == "minilm" and not static_table_cached():
            # The static table takes a minute or more of CPU to distill: the first run on a
            # machine routes with the MiniLM transformer itself (same model, about 5 ms a
            # query) and distills the table after its first answer, for the runs after it.
            embedder_name = FIRST_RUN_EMBEDDER
            log(
                "first run on this machine: the router embeds with MiniLM itself; its fast "
                "static table is distilled in the background once the fleet answers"
            )
        started = time.perf_counter()
        artifact = fit_local_router(manifests, embedder_name)
        assert artifact is not None
        path = folder / "router.bin"
        path.write_bytes(artifact)
        artifact_path = str(path)
        log(f"fitted the router in {time.perf_counter() - started:.1f}s")
    args = BuildArgs(
        fleet_name=manifests.fleet.metadata.name,
        namespace=manifests.namespace,
        fleet=manifests.fleet.spec,
        policy=manifests.policy.spec,
        router_artifact_path=artifact_path,
    )
    _write_json(folder / "args.json", args.to_serve_args())
    return args


#: The embedder of the first run's router (no distilled static table yet on this machine).
FIRST_RUN_EMBEDDER = "minilm-l6-int8"


def static_table_cached() -> bool:
    """Whether the static MiniLM table is distilled on this machine (cached)."""
    from shoal.routing.embedders.static import table_cached

    return table_cached()


def start_table_distillation(folder: Path) -> subprocess.Popen[bytes] | None:
    """Distil the static MiniLM table in a background process at the lowest CPU priority
    (``python -m shoal.local.runner distill``), logging to ``distill.log``; None when it is
    cached already. The process outlives ``shoal up``; a second one started meanwhile
    finds the first one's lock and exits."""
    if static_table_cached():
        return None
    log = open(folder / "distill.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal.local.runner", "distill"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()


def distill_table() -> int:
    """Build and cache the static MiniLM table unless another process is building it, at
    the lowest CPU priority (the fleet's processes go first)."""
    import fcntl

    os.nice(19)

    from shoal.routing.embedders.static import build_or_load_table, cache_dir

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "minilm-static.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another process is distilling the table", flush=True)
            return 0
        started = time.perf_counter()
        build_or_load_table()
        print(f"static MiniLM table ready in {time.perf_counter() - started:.1f}s", flush=True)
    return 0


def start_daemon(folder: Path, host: str, port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    """Spawn the fleet daemon in its own session, logging to ``daemon.log``."""
    log = open(folder / "daemon.log", "wb")  # noqa: SIM115 - handed to the child
    env = dict(os.environ)
    env.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    cmd = [
        sys.executable,
        "-m",
        "shoal.local.runner",
        "daemon",
        "--state",
        str(folder),
        "--host",
        host,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
    ]
    try:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    finally:
        log.close()


def read_status(folder: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((folder / "status.json").read_text())
        return data
    except (OSError, ValueError):
        return {"phase": "starting", "deployments": {}}


def first_answer(base_url: str, timeout: float = 60.0) -> tuple[str, str]:
    """Ask the fleet one question (``model: auto``); ``(answering model, text)``."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.post(
                f"{base_url}/chat/completions",
                json={
                    "model": "auto",
                    "messages": [{"role": "user", "content": "What is 6 times 7?"}],
                    "max_tokens": 64,  # a real model may go on: the first answer stays short
                },
                timeout=30.0,
            )
            if r.status_code == 200:
                return r.headers.get("x-shoal-model", "?"), r.json()["choices"][0]["message"][
                    "content"
                ]
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise UpError(f"the fleet did not answer within {timeout:.0f}s ({last})")


class FirstQuestion:
    """:func:`first_answer` in a thread, so that ``shoal up`` asks as soon as the router's
    deployment is healthy (the request waits in Ray Serve for the model it is routed to,
    if that one is still loading) and keeps showing progress meanwhile."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self._result: tuple[str, str] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._ask, args=(base_url, timeout), name="first-question", daemon=True
        )
        self._thread.start()

    def _ask(self, base_url: str, timeout: float) -> None:
        try:
            self._result = first_answer(base_url, timeout=timeout)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> tuple[str, str]:
        """``(answering model, text)``; raises what the question raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def stop_daemon(folder: Path, timeout: float = 60.0) -> DaemonInfo | None:
    """Stop the running fleet daemon, if any; returns what was running."""
    info = DaemonInfo.read(folder)
    if info is None:
        return None
    if pid_alive(info.pid):
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(info.pid) and time.monotonic() < deadline:
            _reap(info.pid)
            time.sleep(0.2)
        if pid_alive(info.pid):
            # The daemon leads its own process group: end what it started, nothing else.
            os.killpg(info.pid, signal.SIGKILL)
            _reap(info.pid)
    (folder / "daemon.json").unlink(missing_ok=True)
    return info


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: list[str] | None = None) -> int:
    """``python -m shoal.local.runner daemon ...`` (started by ``shoal up``)."""
    parser = argparse.ArgumentParser(prog="shoal.local.runner")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("daemon", help="run the fleet daemon (used by shoal up)")
    d.add_argument("--state", type=Path, required=True)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=DEFAULT_PORT)
    d.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    sub.add_parser("distill", help="distil the router's static MiniLM table (used by shoal up)")
    ns = parser.parse_args(argv)
    if ns.cmd == "distill":
        return distill_table()
    return run_daemon(ns.state, ns.host, ns.port, ns.metrics_port)


if __name__ == "__main__":
    sys.exit(main())
