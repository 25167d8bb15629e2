"""What a running fleet looks like to Prometheus and to the operator, without Ray or KubeRay.

- :class:`LoadedFleet`: the serving engineer's simulated engine (``SimulatedEngine``, real
  continuous batching in real time), as many replicas per model as the RayService asks
  for, driven by a Poisson load the test sets. It exports what the serving layer exports:
  vLLM's engine metrics (``vllm:num_requests_running``, ``..._waiting``, ...) per model
  and the ingress's ``shoal_*`` metrics for the fleet, each on a loopback HTTP port that a
  real Prometheus scrapes.
- :class:`KubeRayPlayer`: plays KubeRay's part: it reads the RayService the operator
  renders, sizes :class:`LoadedFleet` to its ``num_replicas`` and writes the RayService
  status KubeRay would write.

Both run in background threads; the test thread only sets load and reads results.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from shoal.serving.engines.base import EngineOverloaded, GenerationRequest
from shoal.serving.engines.simulated import SimulatedEngine
from shoal.serving.metrics import EngineMetrics, RouterMetrics


@dataclass
class _Replica:
    engine: SimulatedEngine
    ready_at: float
    retired: bool = False


@dataclass
class _Model:
    name: str
    tier: str
    engine_args: dict[str, Any]
    metrics: EngineMetrics
    replicas: list[_Replica] = field(default_factory=list)
    rate: float = 0.0
    pending: int = 0  # requests waiting for any ready replica


class LoadedFleet:
    """Simulated engines under load, exporting serving metrics (see the module docstring)."""

    def __init__(
        self, fleet: str, models: dict[str, tuple[str, dict[str, Any]]], cold_start: float = 0.5
    ) -> None:
        import prometheus_client as pc

        self.fleet = fleet
        self.cold_start = cold_start
        self.registries: dict[str, Any] = {"router": pc.CollectorRegistry()}
        self.router = RouterMetrics(fleet, backend="prometheus", registry=self.registries["router"])
        self.models: dict[str, _Model] = {}
        for name, (tier, args) in models.items():
            reg = pc.CollectorRegistry()
            self.registries[name] = reg
            self.models[name] = _Model(
                name, tier, dict(args), EngineMetrics(name, "vllm", "prometheus", reg)
            )
        self.served = 0
        self._ids = itertools.count()
        self._rng = random.Random(3)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[Any] = []

    # --- lifecycle (test thread) -------------------------------------------------------------

    def start(self, ports: dict[str, int]) -> None:
        """Serve every registry on its loopback port; start the load loop."""
        from prometheus_client import start_http_server

        for key, port in ports.items():
            server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registries[key])
            self._servers.append(server)
        self._thread.start()
        for m in self.models.values():
            self._call(self._ensure, m.name, 1)
            asyncio.run_coroutine_threadsafe(self._arrivals(m), self._loop)
        asyncio.run_coroutine_threadsafe(self._report(), self._loop)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def _call(self, fn: Any, *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    def set_rate(self, model: str, rps: float) -> None:
        """Poisson arrivals at ``rps`` requests per second for ``model``."""
        self._call(setattr, self.models[model], "rate", rps)

    def set_replicas(self, model: str, n: int) -> None:
        """Size ``model`` to ``n`` replicas (new ones serve after the cold start)."""
        self._call(self._ensure, model, n)

    def replicas(self, model: str) -> int:
        return sum(1 for r in self.models[model].replicas if not r.retired)

    # --- inside the loop ---------------------------------------------------------------------

    def _ensure(self, model: str, n: int) -> None:
        m = self.models[model]
        live = [r for r in m.replicas if not r.retired]
        for _ in range(n - len(live)):
            m.replicas.append(_Replica(SimulatedEngine(model, m.engine_args),
                                       time.monotonic() + self.cold_start))  # fmt: skip
        for r in live[n:] if n < len(live) else []:
            r.retired = True  # finishes what it runs, takes nothing new

    def _pick(self, m: _Model) -> SimulatedEngine | None:
        now = time.monotonic()
        ready = [r for r in m.replicas if not r.retired and r.ready_at <= now]
        if not ready:
            return None
        return min(
            ready, key=lambda r: r.engine.scheduler.running + r.engine.scheduler.waiting
        ).engine

    async def _arrivals(self, m: _Model) -> None:
        while True:
            if m.rate <= 0:
                await asyncio.sleep(0.1)
                continue
            await asyncio.sleep(self._rng.expovariate(m.rate))
            self._loop.create_task(self._request(m))

    async def _request(self, m: _Model) -> None:
        started = time.perf_counter()
        self.router.decision("static", m.name, None, 0.0001)
        self.router.set_in_flight(m.name, m.tier, self._in_flight(m) + 1)
        m.pending += 1
        engine = self._pick(m)
        while engine is None:
            await asyncio.sleep(0.05)
            engine = self._pick(m)
        m.pending -= 1
        req = GenerationRequest(request_id=f"r{next(self._ids)}", kind="completion",
                                max_tokens=64, prompt="load " * 40)  # fmt: skip
        code, completion = 200, 0
        try:
            first = True
            async for chunk in engine.generate(req):
                if first:
                    self.router.first_token(m.name, m.tier, time.perf_counter() - started)
                    first = False
                if chunk.finish_reason:
                    completion = chunk.completion_tokens or 0
        except EngineOverloaded:
            code = 503
        self.served += 1
        self.router.finished(model=m.name, tier=m.tier, api="completions", code=code,
                             seconds=time.perf_counter() - started, prompt_tokens=40,
                             completion_tokens=completion, cost_usd=0.0)  # fmt: skip
        self.router.set_in_flight(m.name, m.tier, self._in_flight(m))

    def _in_flight(self, m: _Model) -> int:
        engines = [r.engine.scheduler for r in m.replicas]
        return m.pending + sum(s.running + s.waiting for s in engines)

    async def _report(self) -> None:
        """Engine gauges per model, summed over replicas (as Prometheus sums targets)."""
        while True:
            for m in self.models.values():
                m.replicas = [r for r in m.replicas if not r.retired or r.engine.scheduler.busy]
                scheds = [r.engine.scheduler for r in m.replicas]
                m.metrics.set_load(
                    running=sum(s.running for s in scheds),
                    waiting=sum(s.waiting for s in scheds) + m.pending,
                    kv_cache_usage=max((s.kv_cache_usage for s in scheds), default=0.0),
                )
                self.router.set_in_flight(m.name, m.tier, self._in_flight(m))
            await asyncio.sleep(0.2)


class KubeRayPlayer:
    """Sizes a :class:`LoadedFleet` to the RayService and writes the status KubeRay would."""

    def __init__(self, gateway: Any, namespace: str, name: str, fleet: LoadedFleet) -> None:
        self.gw, self.ns, self.name, self.fleet = gateway, namespace, name, fleet
        self.history: list[tuple[float, dict[str, int]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        handled = None
        while not self._stop.wait(0.3):
            try:
                rs = self.gw.get("ray.io/v1", "RayService", self.ns, self.name)
                if rs is None:
                    continue
                gen = rs["metadata"]["generation"]
                app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
                replicas = {
                    d["name"].removeprefix("model-"): int(
                        d.get("num_replicas")
                        or (d.get("autoscaling_config") or {}).get("initial_replicas", 1)
                    )
                    for d in app["deployments"] if d["name"].startswith("model-")
                }  # fmt: skip
                if gen == handled:
                    continue
                for model, n in replicas.items():
                    self.fleet.set_replicas(model, n)
                self.history.append((time.monotonic(), replicas))
                self.gw.patch_status("ray.io/v1", "RayService", self.ns, self.name,
                                     _running_status(app, gen))  # fmt: skip
                handled = gen
            except Exception as exc:  # keep playing; the test reports what went wrong
                self.errors.append(repr(exc))


def _running_status(app: dict[str, Any], generation: int) -> dict[str, Any]:
    deployments = {d["name"]: {"status": "HEALTHY"} for d in app["deployments"]}
    return {
        "observedGeneration": generation,
        "serviceStatus": "Running",
        "numServeEndpoints": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
                        "observedGeneration": generation}],
        "activeServiceStatus": {"applicationStatuses": {app["name"]: {
            "status": "RUNNING", "serveDeploymentStatuses": deployments}}},
    }  # fmt: skip
