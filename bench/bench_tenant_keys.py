"""Tenants benchmark: how fast a new team's key and a rotated key reach the fleet, and what
holding tenants costs the API server.

Against a real control plane (etcd + kube-apiserver on loopback) and the operator running as
its own process (``python -m shoal.operator``) with the chart's default intervals (fleets
re-checked every 30 s, tenants' Secrets re-read every 10 s):

1. onboarding: ``--tenants`` Tenants (each with its own marked Secret) created one at a time
   for one fleet in mode Tenants; for each, the time from the create call to its key's digest
   in the RayService's router ``user_config``. p50 and max.
2. rotation: ``--rotations`` times, one tenant's Secret gets a new key; the time until the
   new digest replaces the old one (the rotation is noticed by the periodic Secret re-read,
   not by a watch). p50 and max; the bound is about 11 s.
3. steady state: nothing changes for ``--steady-seconds``; the API server's Secret GETs per
   second and writes (every verb but GET, LIST and WATCH) per minute.

Prints a table, then as its last line one JSON object. Run with
``PYTHONPATH=src .venv/bin/python bench/bench_tenant_keys.py``.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from bench_operator import api_requests, start_operator, stop_operator, writes
from kubernetes import client

from shoal.contract.tenants import AccessConfig, key_digest
from shoal.devtools.testing.controlplane import start_control_plane

NS = "tenants"
GROUP, VERSION = "shoal.dev", "v1alpha1"


def _objects() -> list[dict[str, Any]]:
    policy = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RoutingPolicy",
              "metadata": {"name": "p"},
              "spec": {"strategy": "static", "staticOrder": ["a", "b"]}}  # fmt: skip
    fleet = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelFleet", "metadata": {"name": "f"},
             "spec": {"routingPolicyRef": {"name": "p"}, "access": {"mode": "Tenants"},
                      "tiers": [{"name": "small", "costPerReplicaHour": "1.00"}],
                      "models": [{"name": m, "engine": "simulated", "tier": "small"}
                                 for m in ("a", "b")]}}  # fmt: skip
    return [policy, fleet]


def _secret(name: str, key: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"shoal.dev/api-key": "true"}},
            "data": {"key": base64.b64encode(key.encode()).decode()}}  # fmt: skip


def _tenant(name: str) -> dict[str, Any]:
    keys = [{"secretRef": {"name": f"{name}-key", "key": "key"}}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"fleetRef": {"name": "f"}, "apiKeys": keys}}  # fmt: skip


def _digests(api: client.CustomObjectsApi) -> set[str]:
    try:
        rs = api.get_namespaced_custom_object("ray.io", "v1", NS, "rayservices", "f")
    except client.ApiException:
        return set()
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    ingress = next(d for d in app["deployments"] if d["name"] == "router")
    access = AccessConfig.from_user_config(ingress.get("user_config"))
    return {d for t in access.tenants for d in t.key_digests}


def _until(
    api: client.CustomObjectsApi, served: str, gone: str | None = None, timeout: float = 60
) -> float:
    """Seconds until the fleet serves digest ``served`` (and no longer ``gone``)."""
    start = time.monotonic()
    while served not in (now := _digests(api)) or (gone is not None and gone in now):
        if time.monotonic() - start > timeout:
            raise TimeoutError("the fleet never served the key")
        time.sleep(0.05)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", type=int, default=20, help="tenants onboarded one at a time")
    p.add_argument("--rotations", type=int, default=10, help="key rotations timed")
    p.add_argument("--steady-seconds", type=float, default=60, help="steady-state window")
    args = p.parse_args(argv)
    onboard: list[float] = []
    rotate: list[float] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-tenants-") as tmp:
        cp = start_control_plane(Path(tmp) / "cp")
        op = None
        try:
            cp.install_crds()
            cp.kubectl("create", "namespace", NS)
            for obj in _objects():
                cp.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(obj))
            op = start_operator(cp, NS, Path(tmp) / "operator.log")
            api = client.CustomObjectsApi(cp.api_client())
            keys: dict[str, str] = {}
            for i in range(args.tenants):
                name = f"team-{i:03d}"
                keys[name] = secrets.token_urlsafe(36)
                cp.kubectl("apply", "-n", NS, "-f", "-",
                           input=json.dumps(_secret(f"{name}-key", keys[name])))  # fmt: skip
                start = time.monotonic()
                cp.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(_tenant(name)))
                onboard.append(time.monotonic() - start + _until(api, key_digest(keys[name])))
            for i in range(args.rotations):
                name = f"team-{i % args.tenants:03d}"
                old, keys[name] = keys[name], secrets.token_urlsafe(36)
                new = key_digest(keys[name])
                start = time.monotonic()
                cp.kubectl("apply", "-n", NS, "-f", "-",
                           input=json.dumps(_secret(f"{name}-key", keys[name])))  # fmt: skip
                rotate.append(time.monotonic() - start + _until(api, new, key_digest(old)))
                print(f"  rotation {i + 1}: {rotate[-1]:.2f} s", file=sys.stderr, flush=True)
            before = api_requests(cp)
            time.sleep(args.steady_seconds)
            after = api_requests(cp)
        finally:
            stop_operator(op)
            cp.stop()
    delta = after - before
    secret_gets = sum(n for (verb, res), n in delta.items() if verb == "GET" and res == "secrets")
    gets_per_s = secret_gets / args.steady_seconds
    writes_per_min = writes(delta) * 60 / args.steady_seconds
    print(f"{'onboard: Tenant created -> digest served':44} p50 {statistics.median(onboard):6.2f} s"
          f"   max {max(onboard):6.2f} s   ({len(onboard)} tenants)")  # fmt: skip
    print(f"{'rotate: Secret changed -> new digest only':44} p50 {statistics.median(rotate):6.2f} s"
          f"   max {max(rotate):6.2f} s   ({len(rotate)} rotations)")  # fmt: skip
    print(f"{'steady, ' + str(args.tenants) + ' tenants':44} {gets_per_s:6.2f} Secret GETs/s, "
          f"{writes_per_min:.2f} API writes/min")  # fmt: skip
    print(json.dumps({
        "onboard_p50_s": round(statistics.median(onboard), 3),
        "onboard_max_s": round(max(onboard), 3),
        "rotate_p50_s": round(statistics.median(rotate), 3),
        "rotate_max_s": round(max(rotate), 3),
        "steady_secret_gets_per_s": round(gets_per_s, 3),
        "steady_writes_per_min": round(writes_per_min, 3),
        "tenants": args.tenants,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
