"""Shoal's fleet against its peer, Ray Serve LLM's own multi-model OpenAI app, on vLLM.

One local Ray, two Ray Serve applications behind the same HTTP proxy, the same vLLM models:

- ``peer`` (A): ``ray.serve.llm.build_openai_app`` with one ``LLMConfig`` per model, exactly
  the configs Shoal renders for the fleet (:func:`shoal.serving.engines.vllm.llm_config`);
- ``fleet`` (B): the fleet's own application (:func:`shoal.serving.app.build_app`): the same
  models behind Shoal's ingress (routing, fallback, metrics, signed answer ids).

The models are the project's tiny Hugging Face Llama (:mod:`shoal.serving.tinyhf`) under
vLLM's CPU build, twice (``tiny-a`` and ``tiny-b``, static routing ``tiny-a`` first), or a real
model on a GPU (``--model``). Each client sends chat completions back to back, ``--tokens``
tokens each (``ignore_eos``: every answer has the same length). At every point (streams x
unary/streaming x ``auto``/by name) rounds alternate peer and fleet so that the machine's
background load hits both alike; ``auto`` sends the peer, by name, the model the fleet's
router picks. Per app and point: end-to-end p50/p99, time to first token (first content
event; the whole answer when unary), requests per second, and the CPU per request of the
Ray Serve proxy and the app's replicas with their child processes (vLLM's engine cores)
from /proc.

Prints one line per round, a table of B/A ratios (fleet / peer) and, last, one JSON object:
``points`` (the ratios and both sides' figures per point) and the worst ratios over all
points (``min_rps_ratio``, ``max_p50_ratio``, ``max_ttft_ratio``, ``max_p99_ratio``).

Usage: ``make bench-peer`` or ``python bench/bench_peer.py [--streams 1,8,32] ...``
(vLLM installed: the ``vllm`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench_serving import free_port, machine_busy_seconds, pct

MODELS = ("tiny-a", "tiny-b")
PROMPTS = [
    "What is 12 squared?",
    "Write a regex that matches an email address.",
    "What book should I read on holiday?",
    "Solve 2x - 5 = 11 for x.",
    "How do I parse command line arguments in Python?",
    "Tell me a joke about dogs.",
]


@dataclass
class Samples:
    e2e: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds of the proxy and the app's process trees
    busy: float = 0.0  # machine-wide busy CPU seconds
    first_error: str = ""

    def add(self, other: Samples) -> None:
        self.e2e += other.e2e
        self.ttft += other.ttft
        self.errors += other.errors
        self.seconds += other.seconds
        self.cpu += other.cpu
        self.busy += other.busy
        self.first_error = self.first_error or other.first_error

    @property
    def rps(self) -> float:
        return len(self.e2e) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        n = max(1, len(self.e2e))
        return {
            "p50_ms": round(pct(self.e2e, 50) * 1e3, 2),
            "p99_ms": round(pct(self.e2e, 99) * 1e3, 2),
            "ttft_p50_ms": round(pct(self.ttft, 50) * 1e3, 2),
            "rps": round(self.rps, 2),
            "requests": len(self.e2e),
            "errors": self.errors,
            "cpu_ms_per_request": round(self.cpu * 1e3 / n, 2),
            "machine_cpu_ms_per_request": round(self.busy * 1e3 / n, 2),
        }


def _processes() -> dict[int, tuple[int, str, float]]:
    """Every process: its parent, the first word of its command line, its CPU seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, str, float]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(pid)] = (int(fields[1]), cmd, (int(fields[11]) + int(fields[12])) / tick)
    return out


def app_cpu_seconds(app: str) -> float:
    """CPU seconds so far of the Ray Serve proxy and of app ``app``'s replicas, each with its
    descendants (vLLM runs its engine core in a child process)."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    roots = [
        pid for pid, (_, cmd, _) in procs.items()
        if cmd.startswith("ray::ProxyActor") or cmd.startswith(f"ray::ServeReplica:{app}:")
    ]  # fmt: skip
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(children.get(pid, []))
    return sum(procs[p][2] for p in seen if p in procs)


async def drive(
    url: str, models: list[str], streams: int, stream: bool, seconds: float, tokens: int
) -> Samples:
    """``streams`` clients sending chat completions back to back for ``seconds``; request
    ``i`` of a client asks ``models[i % len(models)]``."""
    import aiohttp

    out = Samples()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=streams * 2)
    timeout = aiohttp.ClientTimeout(total=120)

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        n = i
        while time.perf_counter() < deadline:
            body: dict[str, Any] = {
                "model": models[n % len(models)],
                "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
                "max_tokens": tokens,
                "ignore_eos": True,
                "temperature": 0,
                "stream": stream,
            }
            n += 1
            started = time.perf_counter()
            first: float | None = None
            try:
                async with session.post(url, json=body) as r:
                    if r.status != 200:
                        out.errors += 1
                        out.first_error = out.first_error or f"{r.status} {await r.text()}"[:300]
                        continue
                    why = ""
                    if stream:
                        done = False
                        async for line in r.content:
                            if line.startswith(b"data: [DONE]"):
                                done = True
                            elif first is None and line.startswith(b"data: {"):
                                # The first event with text (either app's JSON spacing).
                                event = json.loads(line[6:])
                                choices = event.get("choices") or [{}]
                                if (choices[0].get("delta") or {}).get("content"):
                                    first = time.perf_counter()
                        # The tiny model's random byte tokens can decode to no text at all
                        # (vLLM holds back partial UTF-8): the answer then counts as its own
                        # first token, alike for both apps (same model, prompt, temperature 0).
                        if done and first is None:
                            first = time.perf_counter()
                        why = "" if done else "stream: no [DONE]"
                    else:
                        data = await r.json()
                        first = time.perf_counter()
                        got = (data.get("usage") or {}).get("completion_tokens")
                        why = "" if got else f"unary: no completion tokens in {str(data)[:200]}"
                    if why or first is None:
                        out.errors += 1
                        out.first_error = out.first_error or why
                        continue
                    out.e2e.append(time.perf_counter() - started)
                    out.ttft.append(first - started)
            except (TimeoutError, aiohttp.ClientError) as exc:
                out.errors += 1
                out.first_error = out.first_error or repr(exc)

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(i, session) for i in range(streams)))
    out.seconds = time.perf_counter() - began
    return out


def fleet_args(model_path: str, engine_args: dict[str, Any], interval: int | None) -> Any:
    """The fleet: the two vLLM models in one tier, static routing ``tiny-a`` first."""
    from shoal.contract import BuildArgs

    tier: dict[str, Any] = {"name": "cpu", "costPerReplicaHour": "1.00",
                            "autoscaling": {"targetOngoingRequests": 64}}  # fmt: skip
    if interval is not None:
        tier["streamIntervalMilliseconds"] = interval
    one = {"minReplicas": 1, "maxReplicas": 1}
    models = [
        {"name": m, "engine": "vllm", "tier": "cpu", "source": f"file://{model_path}",
         "resources": {"cpu": "1"}, "engineArgs": engine_args, **one}
        for m in MODELS
    ]  # fmt: skip
    return BuildArgs.parse(
        {
            "fleet_name": "fleet",
            "fleet": {"routingPolicyRef": {"name": "p"}, "tiers": [tier], "models": models},
            "policy": {"strategy": "static", "staticOrder": list(MODELS)},
            "model_paths": dict.fromkeys(MODELS, model_path),
            "limits": {"max_tokens": 512},
            "ingress": {"num_cpus": 0.5},
        }
    )


def ratio(b: float, a: float) -> float | None:
    return round(b / a, 3) if a else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,8,32", help="concurrent clients per point")
    parser.add_argument("--modes", default="unary,stream", help="unary and/or stream")
    parser.add_argument("--targets", default="auto,name", help="auto and/or name")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=3, help="peer/fleet round pairs")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds per app")
    parser.add_argument(
        "--stream-interval-ms", type=int, default=None,
        help="the tier's streamIntervalMilliseconds (default: Shoal's default)",
    )  # fmt: skip
    parser.add_argument(
        "--peer-stream-interval-ms", type=int, default=None,
        help="the peer's stream batching interval, where it should differ from the fleet's "
        "(e.g. 50, Ray Serve LLM's own default; default: the same configs as the fleet)",
    )  # fmt: skip
    parser.add_argument(
        "--model", default=None,
        help="a local model folder to serve (default: the tiny generated Llama on CPU)",
    )  # fmt: skip
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    modes = args.modes.split(",")
    targets = args.targets.split(",")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    from shoal.local.ray_env import local_ray_env
    from shoal.serving.app import build_app
    from shoal.serving.engines.vllm import llm_config

    if args.model:
        path = args.model
        engine_args: dict[str, Any] = {}
    else:
        from shoal.serving.tinyhf import TinyHFModelSpec, ensure_tiny_hf_model

        path = str(ensure_tiny_hf_model(TinyHFModelSpec(max_position_embeddings=256)))
        engine_args = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}
    fleet = fleet_args(path, engine_args, args.stream_interval_ms)
    configs = [llm_config(fleet, fleet.model(m)) for m in MODELS]
    if args.peer_stream_interval_ms is not None:
        interval = {"stream_batching_interval_ms": args.peer_stream_interval_ms}
        configs = [c.model_copy(update={"experimental_configs": interval}) for c in configs]

    port = free_port()
    with local_ray_env():
        ray.init(
            address="local",
            num_cpus=16,  # logical: placement only
            include_dashboard=False,
            object_store_memory=128 * 1024 * 1024,
            log_to_driver=False,
            logging_level="ERROR",
        )
    results: dict[str, dict[str, Samples]] = {}
    #: Per point, the fleet/peer requests-per-second ratio of each round pair: their median is
    #: robust to load that drifts between rounds, their spread shows how much it drifted.
    paired: dict[str, list[float]] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_openai_app({"llm_configs": configs}), name="peer", route_prefix="/peer")
        serve.run(build_app(fleet), name="fleet", route_prefix="/fleet")
        base = f"http://127.0.0.1:{port}"
        urls = {"peer": f"{base}/peer/v1/chat/completions",
                "fleet": f"{base}/fleet/v1/chat/completions"}  # fmt: skip
        routed = MODELS[0]  # static routing: what `auto` answers with
        for app, url in urls.items():
            got = asyncio.run(drive(url, list(MODELS), 2, False, args.warmup, args.tokens))
            got.add(asyncio.run(drive(url, list(MODELS), 2, True, args.warmup, args.tokens)))
            if got.errors or not got.e2e:
                raise SystemExit(f"{app} does not answer: {got.first_error}")
        for n in streams:
            for mode in modes:
                for target in targets:
                    point = f"{mode}-{target}-{n}"
                    asked = {
                        "peer": [routed] if target == "auto" else list(MODELS),
                        "fleet": ["auto"] if target == "auto" else list(MODELS),
                    }
                    results[point] = {app: Samples() for app in urls}
                    paired[point] = []
                    for r in range(args.rounds):
                        this_round: dict[str, float] = {}
                        order = list(urls) if r % 2 == 0 else list(urls)[::-1]
                        for app in order:
                            cpu0, busy0 = app_cpu_seconds(app), machine_busy_seconds()[0]
                            got = asyncio.run(drive(urls[app], asked[app], n, mode == "stream",
                                                    args.seconds, args.tokens))  # fmt: skip
                            got.cpu = app_cpu_seconds(app) - cpu0
                            got.busy = machine_busy_seconds()[0] - busy0
                            results[point][app].add(got)
                            this_round[app] = got.rps
                            print(f"{point} round {r + 1} {app:5s}: {got.rps:6.2f}/s "
                                  f"p50 {pct(got.e2e, 50) * 1e3:7.1f} ms "
                                  f"ttft {pct(got.ttft, 50) * 1e3:7.1f} ms "
                                  f"errors {got.errors} {got.first_error[:80]}",
                                  file=sys.stderr, flush=True)  # fmt: skip
                        if this_round.get("peer"):
                            paired[point].append(this_round["fleet"] / this_round["peer"])
    finally:
        serve.shutdown()
        ray.shutdown()

    points: dict[str, Any] = {}
    for point, by_app in results.items():
        a, b = by_app["peer"].summary(), by_app["fleet"].summary()
        points[point] = {
            "rps": ratio(b["rps"], a["rps"]),
            "p50": ratio(b["p50_ms"], a["p50_ms"]),
            "p99": ratio(b["p99_ms"], a["p99_ms"]),
            "ttft": ratio(b["ttft_p50_ms"], a["ttft_p50_ms"]),
            "cpu_per_request": ratio(b["cpu_ms_per_request"], a["cpu_ms_per_request"]),
            "rps_paired_median": round(pct(paired[point], 50), 3) if paired[point] else None,
            "rps_paired_range": [round(min(paired[point]), 3), round(max(paired[point]), 3)]
            if paired[point]
            else None,
            "peer": a,
            "fleet": b,
        }
    print(f"{'point':18s} {'rps':>6s} {'p50':>6s} {'p99':>6s} {'ttft':>6s} {'cpu/req':>7s}"
          f" {'rps paired (median, range)':>28s}   (B/A: fleet / peer)")  # fmt: skip
    for point, p in points.items():
        print(f"{point:18s} {p['rps']!s:>6s} {p['p50']!s:>6s} {p['p99']!s:>6s} "
              f"{p['ttft']!s:>6s} {p['cpu_per_request']!s:>7s} "
              f"{p['rps_paired_median']!s:>8s} {p['rps_paired_range']!s:>19s}")  # fmt: skip

    def worst(key: str, pick: Any) -> float | None:
        values = [p[key] for p in points.values() if p[key] is not None]
        return pick(values) if values else None

    report = {
        "points": points,
        "min_rps_ratio": worst("rps", min),
        "min_rps_paired_median": worst("rps_paired_median", min),
        "max_p50_ratio": worst("p50", max),
        "max_p99_ratio": worst("p99", max),
        "max_ttft_ratio": worst("ttft", max),
        "stream_interval_ms": {
            "peer": configs[0].experimental_configs.get("stream_batching_interval_ms"),
            "fleet": llm_config(fleet, fleet.model(MODELS[0])).experimental_configs.get(
                "stream_batching_interval_ms"
            ),
        },
        "tokens": args.tokens,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
