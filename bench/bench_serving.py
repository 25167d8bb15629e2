"""What the fleet endpoint adds over calling an engine deployment directly.

One local Ray instance, two Ray Serve applications behind the same HTTP proxy, the same
simulated engine (the load simulator with *fixed* latency: every engine step takes
``--step-ms`` whatever the load) in both:

- ``fleet``: the whole fleet endpoint as shipped: ``model: "auto"`` through the ingress,
  the learned cluster router (fitted on the quickstart's calibration data), fallback logic,
  metrics, then a deployment-handle call to the model's engine;
- ``direct``: the same engines without the endpoint: one application per model whose
  deployment answers the OpenAI API itself, each prompt sent to the model the router picks
  for it (asked once, before measuring), so both paths have the same engines and load.

``--streams`` concurrent clients send streamed chat completions back to back. Rounds
alternate direct/fleet so background load on the machine hits both alike. Reports per
request end-to-end latency and time to first token (p50/p99), and throughput; the last line
printed is one JSON object with ``added_p50_ms``, ``added_p99_ms`` and ``throughput_ratio``
(fleet / direct).

Usage: ``make bench-serving`` or ``python bench/bench_serving.py [--streams 64] ...``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Samples:
    e2e: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    models: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0  # machine-wide busy CPU seconds (every process, the client too)
    wall_cpu: float = 0.0  # machine-wide CPU seconds available

    def add(self, other: Samples) -> None:
        self.e2e += other.e2e
        self.ttft += other.ttft
        self.errors += other.errors
        self.seconds += other.seconds
        self.busy += other.busy
        self.wall_cpu += other.wall_cpu
        for k, v in other.models.items():
            self.models[k] = self.models.get(k, 0) + v
        for k, c in other.cpu.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + c

    def cpu_ms_per_request(self) -> dict[str, float]:
        n = max(1, len(self.e2e))
        per = {k: round(v * 1e3 / n, 3) for k, v in sorted(self.cpu.items())}
        per["total"] = round(sum(self.cpu.values()) * 1e3 / n, 3)
        return per

    @property
    def rps(self) -> float:
        return len(self.e2e) / self.seconds if self.seconds else 0.0


def serve_cpu_seconds(app: str) -> dict[str, float]:
    """CPU seconds used so far by the Ray Serve proxy and the replicas of the applications
    whose name starts with ``app`` (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmd.startswith("ray::ProxyActor"):
            name = "proxy"
        elif cmd.startswith(f"ray::ServeReplica:{app}"):
            name = cmd.split(":")[4].split(".")[0].split(" ")[0]
        else:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / tick, sum(ticks) / tick


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


PROMPTS = [
    "What is 12 squared?",
    "Write a regex that matches an email address.",
    "What book should I read on holiday?",
    "Solve 2x - 5 = 11 for x.",
    "How do I parse command line arguments in Python?",
    "Tell me a joke about dogs.",
]


#: Where a path sends prompt ``i``: (URL, the request's ``model``).
Target = list[tuple[str, str]]


async def drive(targets: Target, streams: int, seconds: float, max_tokens: int) -> Samples:
    """``streams`` clients streaming chat completions back to back for ``seconds``; prompt
    ``i`` of :data:`PROMPTS` goes to ``targets[i]``."""
    import aiohttp

    out = Samples()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=streams * 2)
    timeout = aiohttp.ClientTimeout(total=120)

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while time.perf_counter() < deadline:
            k = (i + n) % len(PROMPTS)
            url, model = targets[k]
            body = {
                "model": model,
                "messages": [{"role": "user", "content": PROMPTS[k]}],
                "max_tokens": max_tokens,
                "stream": True,
            }
            n += 1
            started = time.perf_counter()
            first = None
            try:
                async with session.post(url, json=body) as r:
                    if r.status != 200:
                        out.errors += 1
                        await r.read()
                        continue
                    who = r.headers.get("x-shoal-model", "?")
                    done = False
                    async for line in r.content:
                        if (
                            first is None
                            and line.startswith(b'data: {"id"')
                            and b'"content":"' in line
                            and b'"content":""' not in line
                        ):
                            first = time.perf_counter()
                        if line.startswith(b"data: [DONE]"):
                            done = True
                    if not done or first is None:
                        out.errors += 1
                        continue
                    end = time.perf_counter()
                    out.e2e.append(end - started)
                    out.ttft.append(first - started)
                    out.models[who] = out.models.get(who, 0) + 1
            except (TimeoutError, aiohttp.ClientError):
                out.errors += 1

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(i, session) for i in range(streams)))
    out.seconds = time.perf_counter() - began
    return out


def routed_model(url: str, prompt: str) -> str:
    """The model the fleet's router picks for ``prompt`` (its ``x-shoal-model`` header)."""
    import httpx

    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    response = httpx.post(url, json=body, timeout=60)
    response.raise_for_status()
    return response.headers["x-shoal-model"]


def build_apps(args: argparse.Namespace, workdir: Path) -> tuple[Any, dict[str, Any]]:
    """The fleet application, and one direct (engine-only) application per model."""
    from ray import serve

    from shoal.contract import BuildArgs
    from shoal.local.manifests import fit_local_router, load_fleet_file
    from shoal.serving.app import build_app
    from shoal.serving.model_server import ModelServer

    engine_args = {"fixed_step_ms": args.step_ms, "output_tokens": args.tokens}
    interval = (
        {} if args.stream_interval_ms is None else {"stream_interval_ms": args.stream_interval_ms}
    )
    manifests = load_fleet_file(QUICKSTART)
    artifact = fit_local_router(manifests)
    assert artifact is not None
    (workdir / "router.bin").write_bytes(artifact)
    target = max(args.streams, 8)
    scaling = {"minReplicas": 1, "maxReplicas": 1, "targetOngoingRequests": target}
    tier = {"name": "sim", "costPerReplicaHour": "1.00", "autoscaling": scaling}
    models = [
        {"name": m.name, "tier": "sim", "engine": "simulated", "engineArgs": engine_args}
        for m in manifests.fleet.spec.models
    ]
    fleet = BuildArgs.parse(
        {
            "fleet_name": "bench",
            "fleet": {"routingPolicyRef": {"name": "p"}, "tiers": [tier], "models": models},
            "policy": manifests.policy.spec.to_k8s(),
            "router_artifact_path": str(workdir / "router.bin"),
            "limits": {"max_tokens": 4096, **interval},
            "ingress": {"num_cpus": 0.5, "num_replicas": args.ingress_replicas},
        }
    )
    direct = {
        m["name"]: serve.deployment(ModelServer)
        .options(
            name="direct", max_ongoing_requests=4 * target, ray_actor_options={"num_cpus": 0.1}
        )
        .bind(m, None, fleet.limits.model_dump())
        for m in models
    }
    return build_app(fleet), direct


def summary(s: Samples) -> dict[str, Any]:
    return {
        "p50_ms": round(pct(s.e2e, 50) * 1e3, 2),
        "p99_ms": round(pct(s.e2e, 99) * 1e3, 2),
        "ttft_p50_ms": round(pct(s.ttft, 50) * 1e3, 2),
        "ttft_p99_ms": round(pct(s.ttft, 99) * 1e3, 2),
        "rps": round(s.rps, 2),
        "requests": len(s.e2e),
        "errors": s.errors,
        "machine_busy": round(s.busy / s.wall_cpu, 3) if s.wall_cpu else None,
        "machine_cpu_ms_per_request": round(s.busy * 1e3 / max(1, len(s.e2e)), 3),
        # Load-independent efficiency: CPU the Serve proxy and the app's replicas spent.
        "cpu_ms_per_request": s.cpu_ms_per_request(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams")
    parser.add_argument("--step-ms", type=float, default=25.0, help="fixed engine step (ms)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=3, help="direct/fleet round pairs")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=4.0, help="warm-up seconds per app")
    parser.add_argument(
        "--ingress-replicas", type=int, default=1, help="replicas of the fleet's ingress"
    )
    parser.add_argument(
        "--stream-interval-ms", type=float, default=None,
        help="model replicas' stream coalescing interval (default: the shipped default)",
    )  # fmt: skip
    args = parser.parse_args()

    import tempfile

    import ray
    from ray import serve

    from shoal.local.ray_env import local_ray_env

    port = free_port()
    with local_ray_env():  # the Ray Serve settings the fleet ships with, for both paths
        ray.init(
            address="local",
            num_cpus=8,
            include_dashboard=False,
            object_store_memory=128 * 1024 * 1024,
            log_to_driver=False,
            logging_level="ERROR",
        )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        with tempfile.TemporaryDirectory() as tmp:
            fleet_app, direct_apps = build_apps(args, Path(tmp))
            for name, app in direct_apps.items():
                serve.run(app, name=f"direct-{name}", route_prefix=f"/direct-{name}")
            serve.run(fleet_app, name="bench", route_prefix="/fleet")
            base = f"http://127.0.0.1:{port}"
            fleet_url = f"{base}/fleet/v1/chat/completions"
            chosen = [routed_model(fleet_url, prompt) for prompt in PROMPTS]
            targets = {
                "direct": [(f"{base}/direct-{m}/v1/chat/completions", m) for m in chosen],
                "fleet": [(fleet_url, "auto")] * len(PROMPTS),
            }
            apps = {"direct": "direct-", "fleet": "bench:"}
            for target in targets.values():
                asyncio.run(drive(target, args.streams, args.warmup, args.tokens))
            results = {name: Samples() for name in targets}
            for r in range(args.rounds):
                for name, target in targets.items():
                    cpu0, busy0 = serve_cpu_seconds(apps[name]), machine_busy_seconds()
                    got = asyncio.run(drive(target, args.streams, args.seconds, args.tokens))
                    cpu1, busy1 = serve_cpu_seconds(apps[name]), machine_busy_seconds()
                    got.cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
                    got.busy, got.wall_cpu = busy1[0] - busy0[0], busy1[1] - busy0[1]
                    results[name].add(got)
                    print(f"round {r + 1} {name:6s}: {len(got.e2e)} requests, {got.rps:.1f}/s, "
                          f"p50 {pct(got.e2e, 50) * 1e3:.1f} ms, errors {got.errors}, "
                          f"serve CPU {got.cpu_ms_per_request()['total']:.2f} ms/request, "
                          f"machine busy {got.busy / max(got.wall_cpu, 1e-9):.0%}",
                          file=sys.stderr, flush=True)  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()

    d, f = results["direct"], results["fleet"]
    report = {
        "added_p50_ms": round((pct(f.e2e, 50) - pct(d.e2e, 50)) * 1e3, 2),
        "added_p99_ms": round((pct(f.e2e, 99) - pct(d.e2e, 99)) * 1e3, 2),
        "throughput_ratio": round(f.rps / d.rps, 4) if d.rps else None,
        "added_ttft_p50_ms": round((pct(f.ttft, 50) - pct(d.ttft, 50)) * 1e3, 2),
        "added_ttft_p99_ms": round((pct(f.ttft, 99) - pct(d.ttft, 99)) * 1e3, 2),
        # CPU the ingress ("router" deployment) spends per request, from its processes' own
        # accounting (/proc): parsing, routing, capability checks, relaying the answer.
        "ingress_cpu_ms_per_request": f.cpu_ms_per_request().get("router"),
        "direct": {**summary(d), "models": d.models},
        "fleet": {**summary(f), "models": f.models},
        "streams": args.streams,
        "ingress_replicas": args.ingress_replicas,
        "step_ms": args.step_ms,
        "tokens": args.tokens,
        "cpus": os.cpu_count(),
    }  # fmt: skip
    print(f"direct: p50 {report['direct']['p50_ms']} ms  p99 {report['direct']['p99_ms']} ms  "
          f"{report['direct']['rps']} req/s")  # fmt: skip
    print(f"fleet:  p50 {report['fleet']['p50_ms']} ms  p99 {report['fleet']['p99_ms']} ms  "
          f"{report['fleet']['rps']} req/s")  # fmt: skip
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
