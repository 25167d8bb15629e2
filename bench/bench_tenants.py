"""How tenants' limits hold across ingress replicas, and what they cost per request.

Two designs of keeping a limit across ``--replicas`` ingress replicas, each run as real
:class:`~shoal.serving.tenants.TenantGate` objects (the ingress's own code) in this process,
fed ``--rate`` requests per second of one tenant for ``--seconds``, split unevenly
(``--skew``: the first replica's share of the load) against a limit of ``--rpm`` requests per
minute (the offered load is above it):

- ``share``: each replica enforces ``rpm / replicas`` alone (no shared state; this is also
  the ``share`` failure mode);
- ``store``: the shared usage store as shipped, a real Ray actor, each replica syncing every
  ``--sync`` seconds in the background and admitting at most its granted part of the headroom.

It reports requests admitted against the limit (accuracy), and CPU per request of the gate
(``admit`` + ``finish``; open fleets skip it entirely), of the background sync (amortised
over the requests; Ray's own background CPU in the process subtracted), and, for
comparison, of one store call per request (the design the gate
avoids). The last line printed is one JSON object.

Usage: ``python bench/bench_tenants.py [--rpm 600 --rate 40 --seconds 20 ...]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from shoal.contract import AccessConfig, key_digest
from shoal.serving.tenants import TenantGate, TenantRefused
from shoal.serving.usage import RayStore, UsageSync

KEY = "sk-bench-" + "k" * 40


def access(rpm: int, sync: float) -> AccessConfig:
    return AccessConfig.model_validate(
        {
            "mode": "tenants",
            "sync_interval_seconds": sync,
            "tenants": [
                {"name": "t", "key_digests": [key_digest(KEY)],
                 "limits": {"requests_per_minute": rpm, "tokens_per_minute": 10**9}},
                *({"name": f"other{i}", "key_digests": [key_digest(f"{KEY}{i}")]}
                  for i in range(9)),
            ],
        }
    )  # fmt: skip


async def drive(gates: list[TenantGate], args: argparse.Namespace) -> int:
    """Offer ``rate`` requests per second, ``skew`` of them to replica 0; count admitted."""
    admitted = 0
    interval = 1.0 / args.rate
    start = time.monotonic()
    n = 0
    header = f"Bearer {KEY}"
    while time.monotonic() - start < args.seconds:
        n += 1
        g = gates[0] if (n % 100) < args.skew * 100 else gates[1 + n % (len(gates) - 1)]
        try:
            ticket = g.admit(g.authenticate(header), 20)
            admitted += 1
            g.finish(ticket, 40, 0.0001)
        except TenantRefused:
            pass
        await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
    return admitted


async def run_share(args: argparse.Namespace) -> dict[str, Any]:
    cfg = access(args.rpm, args.sync)
    gates = [TenantGate(cfg, replicas=args.replicas) for _ in range(args.replicas)]
    for g in gates:
        g.store_up = False  # no shared state: each replica its 1/N share
    admitted = await drive(gates, args)
    return {"admitted": admitted, "error_percent": 100.0 * (admitted - args.rpm) / args.rpm}


async def run_store(args: argparse.Namespace, name: str) -> dict[str, Any]:
    cfg = access(args.rpm, args.sync)
    gates = [TenantGate(cfg, replicas=args.replicas) for _ in range(args.replicas)]
    store = RayStore(name)
    syncs = [UsageSync(g, store, f"r{i}") for i, g in enumerate(gates)]
    for s in syncs:
        await s.sync_once()
    # Ray's own threads in this process use CPU too: measure them alone first.
    base0 = time.process_time()
    await asyncio.sleep(2.0)
    baseline = time.process_time() - base0
    cpu0 = time.process_time()
    rounds = 0

    async def timed_loop(s: UsageSync) -> None:
        nonlocal rounds
        while True:
            await s.sync_once()
            rounds += 1
            await asyncio.sleep(args.sync)

    # the sync loops' CPU, measured alone over the same time (no requests)
    idle = [asyncio.create_task(timed_loop(s)) for s in syncs]
    await asyncio.sleep(2.0)
    for t in idle:
        t.cancel()
    sync_cpu_per_round = max(0.0, time.process_time() - cpu0 - baseline) / max(1, rounds)
    loops = [asyncio.create_task(timed_loop(s)) for s in syncs]
    admitted = await drive(gates, args)
    for t in loops:
        t.cancel()
    return {
        "admitted": admitted,
        "error_percent": 100.0 * (admitted - args.rpm) / args.rpm,
        "sync_cpu_ms_per_round": 1000.0 * sync_cpu_per_round,
        "store": store,
    }


def gate_cpu_us(args: argparse.Namespace) -> float:
    """CPU of authenticate + admit + finish for one request, with a fresh snapshot."""
    gate = TenantGate(access(10**9, args.sync), replicas=args.replicas)
    header = f"Bearer {KEY}"
    n = 50_000
    started = time.process_time()
    for _ in range(n):
        t = gate.authenticate(header)
        gate.finish(gate.admit(t, 20), 40, 0.0001)
    return 1e6 * (time.process_time() - started) / n


async def per_request_call_us(store: RayStore, n: int = 300) -> float:
    """CPU in this process of one store call (what a call per request would add)."""
    started = time.process_time()
    for _ in range(n):
        await store.sync("probe", {"t": (None, None)}, {}, 1)
    return 1e6 * (time.process_time() - started) / n


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rpm", type=int, default=300)
    p.add_argument("--rate", type=float, default=40.0, help="offered requests per second")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--skew", type=float, default=0.8, help="share of load on replica 0")
    p.add_argument("--sync", type=float, default=0.2)
    args = p.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print(f"limit {args.rpm}/min, offered {args.rate}/s for {args.seconds}s "
              f"({args.rate * args.seconds:.0f} requests), {args.replicas} replicas, "
              f"{args.skew:.0%} of the load on the first")  # fmt: skip
        share = await run_share(args)
        print(f"share (limit/N per replica): admitted {share['admitted']} "
              f"({share['error_percent']:+.1f}%)")  # fmt: skip
        store = await run_store(args, "shoal-usage-bench")
        print(f"store (Ray actor, sync {args.sync}s): admitted {store['admitted']} "
              f"({store['error_percent']:+.1f}%), sync {store['sync_cpu_ms_per_round']:.3f} "
              "ms CPU per replica-round")  # fmt: skip
        gate_us = gate_cpu_us(args)
        call_us = await per_request_call_us(store["store"])
        # The sync costs the same whatever the request rate: CPU per second per replica.
        sync_ms_per_s = store["sync_cpu_ms_per_round"] / args.sync
        per_request_sync_us = 1000.0 * sync_ms_per_s * args.replicas / args.rate
        print(f"gate CPU per request {gate_us:.1f} us; background sync {sync_ms_per_s:.1f} ms "
              f"CPU per second per replica, whatever the load ({per_request_sync_us:.0f} "
              f"us/request at {args.rate}/s, {per_request_sync_us * args.rate / 1000:.0f} at "
              f"1000/s); a store call per request would cost {call_us:.0f} us CPU in the "
              "ingress")  # fmt: skip
        print(json.dumps({
            "rpm": args.rpm, "offered": int(args.rate * args.seconds), "skew": args.skew,
            "share_admitted": share["admitted"],
            "share_error_percent": round(share["error_percent"], 1),
            "store_admitted": store["admitted"],
            "store_error_percent": round(store["error_percent"], 1),
            "gate_cpu_us_per_request": round(gate_us, 2),
            "sync_cpu_ms_per_second_per_replica": round(sync_ms_per_s, 2),
            "sync_cpu_us_per_request": round(per_request_sync_us, 2),
            "store_call_cpu_us": round(call_us, 1),
        }))  # fmt: skip
    finally:
        ray.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
