"""Operator benchmark: how fast applied fleets become RayServices, at which scale, at what cost.

Against a real control plane (etcd + kube-apiserver on loopback) and the operator running as
its own process (``python -m shoal.operator``), as in production:

1. apply latency: 50 fleets of 4 models applied one at a time; for each, the time from the
   create call to its RayService appearing (seen through a watch). p50 and p95.
2. convergence curve: for each fleet count (``--fleets``, default 100,300,1000), a fresh
   namespace and a fresh operator watching it; that many fleets of ``--models`` models
   applied at once (by 8 clients in parallel); the time until every fleet has its RayService
   and a status for its current generation. With it: the operator's CPU seconds and peak
   resident memory (VmHWM), and the API server's requests by verb and resource (its own
   ``apiserver_request_total``).
3. steady state, at the largest count: nothing changes for ``--steady-seconds``; the API
   writes (every verb but GET, LIST and WATCH; not the API server's own lease and endpoints)
   per fleet per minute, and which fleets' status changed (should be none).

The control plane and the operator are always stopped, also when the benchmark fails or is
interrupted (SIGINT, SIGTERM). Prints a table, then as its last line one JSON object with
apply_p50_s, apply_p95_s, converge_<N>x<M>_s per count, peak_rss_mb (at the largest count)
and steady_writes_per_fleet_per_min. Run with ``make bench-operator``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from shoal.devtools.testing.controlplane import ControlPlane, start_control_plane

GROUP, VERSION = "shoal.dev", "v1alpha1"
READS = {"GET", "LIST", "WATCH"}
#: Clients that create the fleets of a convergence run in parallel.
CREATORS = 8
#: What the API server writes itself (its lease, the kubernetes Service's endpoints): not
#: the operator's, so not counted as its writes.
HOUSEKEEPING = {"leases", "endpoints", "endpointslices"}
LABEL = re.compile(r'(\w+)="([^"]*)"')


def fleet(name: str, models: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelFleet",
        "metadata": {"name": name},
        "spec": {
            "routingPolicyRef": {"name": "static"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.40"},
                      {"name": "large", "costPerReplicaHour": "2.10"}],
            "models": [{"name": f"m{i:02d}", "engine": "simulated",
                        "tier": "small" if i % 3 else "large"} for i in range(models)],
        },
    }  # fmt: skip


class Watcher(threading.Thread):
    """Follows one kind in a namespace through a watch (resumed from its last version, so no
    re-listing): when each object was first seen, and its latest body."""

    def __init__(self, api: client.CustomObjectsApi, group: str, version: str, ns: str,
                 plural: str) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.api, self.args = api, (group, version, ns, plural)
        self.first: dict[str, float] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.cond = threading.Condition()

    def run(self) -> None:
        w, rv = watch.Watch(), None
        while not self.stop.is_set():
            kwargs: dict[str, Any] = {"timeout_seconds": 30, "allow_watch_bookmarks": True}
            if rv:
                kwargs["resource_version"] = rv
            try:
                for ev in w.stream(self.api.list_namespaced_custom_object, *self.args, **kwargs):
                    obj = ev["object"]
                    rv = obj["metadata"].get("resourceVersion") or rv
                    if ev["type"] == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    with self.cond:
                        self.first.setdefault(name, time.perf_counter())
                        self.latest[name] = obj
                        self.cond.notify_all()
                    if self.stop.is_set():
                        return
            except Exception:  # expired version, API restart: list again
                rv = None
                if self.stop.wait(0.5):
                    return

    def wait_for(self, name: str, timeout: float = 60) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.first, timeout):
                raise TimeoutError(f"{self.args[3]} {name} not seen within {timeout}s")
            return float(self.first[name])


def converged(fleets: Watcher, rayservices: Watcher, names: set[str]) -> set[str]:
    """The fleets of ``names`` with a RayService and a status for their current generation."""
    done = set()
    with fleets.cond:
        for name in names:
            obj = fleets.latest.get(name)
            if obj is None or name not in rayservices.first:
                continue
            st = obj.get("status") or {}
            if st.get("observedGeneration") == obj["metadata"]["generation"]:
                done.add(name)
    return done


def proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_requests(cp: ControlPlane) -> Counter[tuple[str, str]]:
    """The API server's request counts so far, by (verb, resource[/subresource])."""
    req = urllib.request.Request(f"{cp.server}/metrics",
                                 headers={"Authorization": f"Bearer {cp.token}"})  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    text = urllib.request.urlopen(req, context=ctx, timeout=30).read().decode()
    out: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_raw, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(LABEL.findall(labels_raw))
        res = labels.get("resource", "")
        if labels.get("subresource"):
            res += "/" + labels["subresource"]
        out[(labels.get("verb", ""), res)] += int(float(value))
    return out


def writes(counts: Counter[tuple[str, str]]) -> int:
    return sum(
        n for (verb, res), n in counts.items() if verb not in READS and res not in HOUSEKEEPING
    )


def start_operator(cp: ControlPlane, ns: str, log: Path) -> subprocess.Popen[bytes]:
    # MALLOC_ARENA_MAX as the operator's image sets it (operator/Dockerfile).
    env = {"MALLOC_ARENA_MAX": "2", **os.environ, "KUBECONFIG": str(cp.kubeconfig)}
    return subprocess.Popen(
        [sys.executable, "-m", "shoal.operator", "-n", ns, "--metrics-port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip


def stop_operator(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


class Bench:
    """One control plane; one namespace and operator per measurement."""

    def __init__(self, cp: ControlPlane, tmp: Path, models: int) -> None:
        self.cp, self.tmp, self.models = cp, tmp, models
        self.api = client.CustomObjectsApi(cp.api_client())
        self.operator: subprocess.Popen[bytes] | None = None
        self.watchers: list[Watcher] = []

    def namespace(self, ns: str) -> tuple[Watcher, Watcher]:
        """A fresh namespace with the static policy, its operator, and watchers."""
        self.cp.kubectl("create", "namespace", ns)
        self.api.create_namespaced_custom_object(GROUP, VERSION, ns, "routingpolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "RoutingPolicy",
            "metadata": {"name": "static"},
            "spec": {"strategy": "static", "staticOrder": ["m00", "m01"]},
        })  # fmt: skip
        self.operator = start_operator(self.cp, ns, self.tmp / f"operator-{ns}.log")
        fleets = Watcher(self.api, GROUP, VERSION, ns, "modelfleets")
        rss = Watcher(self.api, "ray.io", "v1", ns, "rayservices")
        self.watchers = [fleets, rss]
        for w in self.watchers:
            w.start()
        time.sleep(3)  # let the operator start watching
        return fleets, rss

    def done_with_namespace(self) -> None:
        for w in self.watchers:
            w.stop.set()
        stop_operator(self.operator)
        self.operator = None

    def apply_latency(self) -> tuple[float, float]:
        _, rss = self.namespace("bench-apply")
        latencies = []
        for i in range(50):
            name = f"a{i:02d}"
            t0 = time.perf_counter()
            self.api.create_namespaced_custom_object(GROUP, VERSION, "bench-apply",
                                                     "modelfleets", fleet(name, 4))  # fmt: skip
            latencies.append(rss.wait_for(name) - t0)
        self.done_with_namespace()
        return statistics.median(latencies), statistics.quantiles(latencies, n=20)[18]

    def converge(self, n: int, timeout: float, steady: float) -> dict[str, Any]:
        ns = f"bench-{n}"
        fleets, rss = self.namespace(ns)
        assert self.operator is not None
        pid = self.operator.pid
        cpu0, before = cpu_seconds(pid), api_requests(self.cp)
        t0 = time.perf_counter()

        def create(i: int) -> None:
            self.api.create_namespaced_custom_object(GROUP, VERSION, ns, "modelfleets",
                                                     fleet(f"c{i:04d}", self.models))  # fmt: skip

        # Applied "at once": from several clients, as a deploy pipeline or kubectl of many
        # users would; one client alone is limited by its own round trips.
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(create, range(n)))
        applied = time.perf_counter() - t0  # the API server validates every create
        names = {f"c{i:04d}" for i in range(n)}
        curve: dict[str, float] = {}
        while True:
            done = len(converged(fleets, rss, names))
            elapsed = time.perf_counter() - t0
            for frac in (0.5, 0.9):
                if done >= frac * n and f"p{int(frac * 100)}" not in curve:
                    curve[f"p{int(frac * 100)}"] = round(elapsed, 1)
            if done == n:
                break
            if elapsed > timeout:
                raise TimeoutError(f"{n - done} of {n} fleets did not converge in {timeout:.0f}s")
            time.sleep(1)
        took = time.perf_counter() - t0
        during = api_requests(self.cp) - before
        result: dict[str, Any] = {
            "fleets": n, "seconds": took, "curve": curve, "applied_s": applied,
            "operator_cpu_s": cpu_seconds(pid) - cpu0,
            "peak_rss_mb": proc_status(pid, "VmHWM"),
            "requests": during,
        }  # fmt: skip
        if steady > 0:
            # Let the convergence's own echoes (status events, first re-checks) pass first.
            time.sleep(min(30.0, steady / 2))
            cpu1, base = cpu_seconds(pid), api_requests(self.cp)
            with fleets.cond:
                was = {k: v.get("status") for k, v in fleets.latest.items()}
            time.sleep(steady)
            quiet = api_requests(self.cp) - base
            with fleets.cond:
                changed = {k: (was.get(k), v.get("status")) for k, v in fleets.latest.items()
                           if v.get("status") != was.get(k)}  # fmt: skip
            result["steady_status_changes"] = len(changed)
            if changed:
                name, (old, new) = sorted(changed.items())[0]
                print(f"  status of {name} changed in steady state:\n    {old}\n    {new}",
                      file=sys.stderr)  # fmt: skip
            result["steady"] = quiet
            result["steady_writes_per_fleet_per_min"] = writes(quiet) / n / (steady / 60)
            result["steady_operator_cpu_pct"] = 100 * (cpu_seconds(pid) - cpu1) / steady
            result["peak_rss_mb"] = proc_status(pid, "VmHWM")
        self.done_with_namespace()
        return result


def table(counts: Counter[tuple[str, str]], seconds: float, top: int = 8) -> str:
    rows = [f"    {verb:7} {res:28} {c:7d}  {c / seconds:7.1f}/s"
            for (verb, res), c in counts.most_common(top) if c]  # fmt: skip
    return "\n".join(rows)


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fleets", default="100,300,1000",
                   help="comma-separated fleet counts of the convergence curve")  # fmt: skip
    p.add_argument("--models", type=int, default=20, help="models per fleet")
    p.add_argument("--timeout", type=float, default=600, help="seconds per convergence")
    p.add_argument("--steady-seconds", type=float, default=120,
                   help="steady-state window at the largest count (0: skip)")  # fmt: skip
    args = p.parse_args(argv)
    counts = sorted(int(c) for c in args.fleets.split(","))
    signal.signal(signal.SIGTERM, _interrupted)  # so that the finally below always runs

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        cp = None
        bench = None
        try:
            cp = start_control_plane(Path(tmp) / "cp")
            cp.install_crds()
            bench = Bench(cp, Path(tmp), args.models)
            p50, p95 = bench.apply_latency()
            for n in counts:
                steady = args.steady_seconds if n == counts[-1] else 0
                results.append(bench.converge(n, args.timeout, steady))
                r = results[-1]
                print(f"  {n} fleets: {r['seconds']:.1f} s, operator "
                      f"{r['operator_cpu_s']:.0f} CPU s, peak RSS {r['peak_rss_mb']:.0f} MB",
                      file=sys.stderr, flush=True)  # fmt: skip
        finally:
            # A second signal (``timeout`` signals its child, then its whole process group)
            # must not cut the clean-up short: an API server left without its etcd (whose
            # data directory goes with the temporary directory) spins on forever.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                if bench is not None:
                    bench.done_with_namespace()
            finally:
                if cp is not None:
                    cp.stop()

    m = args.models
    label = "apply -> RayService written, 50 fleets"
    print(f"{label:48} p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms")
    out: dict[str, Any] = {"apply_p50_s": round(p50, 4), "apply_p95_s": round(p95, 4)}
    for r in results:
        n, secs = r["fleets"], r["seconds"]
        print(f"{f'{n} fleets x {m} models converge':48} {secs:7.1f} s "
              f"(all applied after {r['applied_s']:.1f} s, half converged after "
              f"{r['curve'].get('p50')} s, 90 % after {r['curve'].get('p90')} s); "
              f"operator {r['operator_cpu_s']:.0f} CPU s, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"{writes(r['requests']) / n:.1f} API writes per fleet")  # fmt: skip
        print(f"  API requests while converging (top, by verb and resource):\n"
              f"{table(r['requests'], secs)}")  # fmt: skip
        out[f"converge_{n}x{m}_s"] = round(secs, 2)
    last = results[-1]
    out["peak_rss_mb"] = round(last["peak_rss_mb"], 1)
    if "steady" in last:
        rate = last["steady_writes_per_fleet_per_min"]
        cpu = last["steady_operator_cpu_pct"]
        print(f"{'steady state, ' + str(last['fleets']) + ' fleets':48} {rate:7.3f} writes "
              f"per fleet per minute; operator {cpu:.0f} % CPU")  # fmt: skip
        print(f"  API requests in steady state:\n{table(last['steady'], args.steady_seconds)}")
        out["steady_writes_per_fleet_per_min"] = round(rate, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
