"""Quickstart benchmark: a fresh clone's ``make up`` to the first answer, then again warm.

1. fresh: ``git clone`` of this repository into a new folder, then ``make up`` there with
   every cache empty (pip's and uv's, Shoal's own ``$SHOAL_CACHE_DIR`` with the router's
   distilled embedder table, and no ``PIP_FIND_LINKS``), as on a machine that never ran
   Shoal; until ``shoal up`` has printed the first answer of the real model.
2. ``make down``; the first run's background work finishes (bytecode where
   PYTHONDONTWRITEBYTECODE is set, the router's static table: ``background_s``, the wait);
   then warm: ``make up`` again in the same clone (``.venv`` and the caches kept), and
   ``make down``.

Each output line is timestamped as it arrives; the phases come from hack/setup.sh's lines
(``[setup] 12.3s ...``, seconds since the set-up started) and from ``shoal up``'s
``timings.json`` (seconds since ``shoal up`` started: router fitted, Ray and Serve up, each
deployment healthy, first answer). The load average is sampled every 2 s during each run
(the machine may be shared): its mean and maximum are reported beside the figures.

Prints each run's phases, then as its last line one JSON object. Needs git, make and
network access to the package index; takes the ports 8000 and 8080. Run with
``python3 bench/bench_make_up.py`` (stdlib only; no venv needed).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SETUP_LINE = re.compile(r"^\[setup\] (\d+\.\d)s (.*)$")
ANSWER_LINE = re.compile(r"first answer after ([\d.]+)s")


class LoadSampler:
    """The 1-minute load average every ``period`` seconds, in a thread."""

    def __init__(self, period: float = 2.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(period)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"mean": round(sum(s) / len(s), 1), "max": round(max(s), 1)}


def run_timed(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``cmd``; every output line with the seconds since the start at which it came."""
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    with LoadSampler() as load:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        for line in proc.stdout:
            lines.append((round(time.monotonic() - started, 2), line.rstrip("\n")))
            print(f"  {lines[-1][0]:7.1f}s | {lines[-1][1]}", flush=True)
        rc = proc.wait()
        timer.cancel()
    return {
        "rc": rc,
        "seconds": round(time.monotonic() - started, 2),
        "lines": lines,
        "load": load.summary(),
    }


def phases(result: dict[str, Any], state: Path) -> dict[str, Any]:
    """Set-up phases (from its log lines) and ``shoal up``'s moments (``timings.json``)."""
    setup: list[tuple[float, str]] = []
    setup_end = 0.0
    answer_at = None
    for at, line in result["lines"]:
        m = SETUP_LINE.match(line)
        if m:
            setup.append((float(m.group(1)), m.group(2)))
            setup_end = at
        a = ANSWER_LINE.search(line)
        if a:
            answer_at = at
    steps = {}
    for (t, msg), (t_next, _) in zip(setup, [*setup[1:], (setup[-1][0], "")], strict=True):
        steps[msg] = round(t_next - t, 1)
    try:
        up = json.loads((state / "timings.json").read_text())
    except (OSError, ValueError):
        up = {}
    return {
        "setup_s": round(setup_end, 1),
        "setup_steps_s": steps,
        "shoal_up_s": up,
        "first_answer_s": answer_at,
    }


@contextlib.contextmanager
def held(lock: Path | None) -> Iterator[None]:
    """Hold ``lock`` (an flock) while a fleet runs, where other jobs on the machine start Ray
    under the same lock; nothing without one."""
    if lock is None:
        yield
        return
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def settle(clone: Path, cache: Path, timeout: float) -> float | None:
    """Wait for the first run's background work (hack/setup.sh's bytecode, where
    PYTHONDONTWRITEBYTECODE is set, and the router's static table): the seconds it took from
    here, None if it was not done within ``timeout``."""
    started = time.monotonic()
    compiled = clone / ".venv" / ".shoal-compiled"
    need_compile = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    while time.monotonic() - started < timeout:
        table = any(cache.glob("minilm-l6-static-*.npy"))
        if table and (compiled.exists() or not need_compile):
            return round(time.monotonic() - started, 1)
        time.sleep(2)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository to clone")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per make up")
    parser.add_argument("--keep", action="store_true", help="keep the clone and its venv")
    parser.add_argument(
        "--lock", type=Path, default=None, help="flock file to hold while each fleet runs"
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the first run's background work before the warm run",
    )
    ns = parser.parse_args()

    work = ns.dir or Path(tempfile.mkdtemp(prefix="shoal-make-up-"))
    work.mkdir(parents=True, exist_ok=True)
    clone = work / "shoal"
    state = work / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "VIRTUAL_ENV")}
    env.pop("PYTHONPATH", None)
    env.update(
        {
            "PIP_NO_CACHE_DIR": "1",
            "UV_CACHE_DIR": str(work / "uv-cache"),
            "XDG_CACHE_HOME": str(work / "xdg-cache"),
            "SHOAL_CACHE_DIR": str(work / "shoal-cache"),
            "SHOAL_STATE_DIR": str(state),
        }
    )
    report: dict[str, Any] = {"load_before": round(os.getloadavg()[0], 1)}
    try:
        started = time.monotonic()
        subprocess.run(["git", "clone", "--quiet", str(ns.repo), str(clone)], check=True)
        report["clone_s"] = round(time.monotonic() - started, 2)
        for run in ("fresh", "warm"):
            print(f"== {run}: make up", flush=True)
            with held(ns.lock):
                result = run_timed(["make", "up"], clone, env, ns.timeout)
                report[run] = {
                    "rc": result["rc"],
                    "make_up_s": result["seconds"],
                    "load": result["load"],
                    **phases(result, state),
                }
                subprocess.run(["make", "down"], cwd=clone, env=env, capture_output=True)
            if result["rc"] != 0:
                break
            if run == "fresh":
                report["background_s"] = settle(clone, work / "shoal-cache", ns.settle_timeout)
        fresh = report.get("fresh", {})
        if "make_up_s" in fresh:
            report["fresh"]["clone_to_answer_s"] = round(report["clone_s"] + fresh["make_up_s"], 1)
    finally:
        if not ns.keep and ns.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    for run in ("fresh", "warm"):
        r = report.get(run)
        if r:
            print(
                f"{run}: make up {r['make_up_s']:.1f}s (rc {r['rc']}), set-up {r['setup_s']}s "
                f"{r['setup_steps_s']}, shoal up {r['shoal_up_s']}, load {r['load']}"
            )
    print(json.dumps(report, sort_keys=True))
    ok = all(report.get(r, {}).get("rc") == 0 for r in ("fresh", "warm"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
