"""Readiness probes of the models, and the in-flight gauge the autoscaler reads.

:class:`Probes` runs two background loops in each ingress replica: one probes every model that
has not answered within the probe interval (a parked model is never probed: a probe would
wake it), the other publishes the requests in flight per model once a second. It answers
``/ready`` from what they saw.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.responses import Response

from shoal.contract import BuildArgs
from shoal.serving import http
from shoal.serving.fallback import ModelBook
from shoal.serving.metrics import RouterMetrics

log = logging.getLogger("shoal.serving.ingress")

#: How often the ingress publishes the per-model in-flight gauge (the autoscaler reads it).
IN_FLIGHT_PUBLISH_SECONDS = 1.0


class Probes:
    """Background probes and gauges of one ingress replica (see the module docstring)."""

    def __init__(self, args: BuildArgs, book: ModelBook, metrics: RouterMetrics) -> None:
        self.args = args
        self.limits = args.limits
        self.book = book
        self.metrics = metrics
        self._probe_task: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None
        self._published_in_flight: dict[str, int] = {}

    def readiness(self) -> Response:
        """200 while a model serves, 503 otherwise. Counts only: ``/ready`` answers anyone
        (probes carry no key), so it names no model; which ones serve is in the metrics and,
        for a tenant, ``/v1/models``."""
        ready = len(self.book.ready)
        body = {
            "ready": ready > 0,
            "models_ready": ready,
            "models": len(self.book.clients),
            "unhealthy": len(self.book.health.unhealthy()),
        }
        return http.json_response(body, 200 if ready else 503)

    def start(self) -> None:
        """Start the background work: readiness probes, and publishing the in-flight gauge."""
        if self._probe_task is None:
            loop = asyncio.get_running_loop()
            self._probe_task = loop.create_task(self._probe_loop())
            self._gauge_task = loop.create_task(self._gauge_loop())

    def publish_in_flight(self) -> None:
        """Set the in-flight gauge of every model whose count changed since the last call.

        Published every :data:`IN_FLIGHT_PUBLISH_SECONDS` rather than on every request: a
        Ray metric update costs about as much CPU as routing the request, and the metrics
        agent exports far less often than once a second anyway."""
        for model, value in self.book.in_flight.items():
            if self._published_in_flight.get(model) != value:
                self.metrics.set_in_flight(model, self.book.clients[model].info.tier, value)
                self._published_in_flight[model] = value

    async def _gauge_loop(self) -> None:
        while True:
            self.publish_in_flight()
            await asyncio.sleep(IN_FLIGHT_PUBLISH_SECONDS)

    async def probe_once(self) -> None:
        """Probe every model that has not answered within the probe interval."""
        interval = self.limits.health_probe_interval_seconds
        now = time.monotonic()
        stale = [
            m
            for m in self.book.clients
            if m not in self.args.parked and now - self.book.last_ok.get(m, -1e9) > interval
        ]  # a probe would wake a parked model

        async def one(model: str) -> None:
            try:
                await asyncio.wait_for(self.book.clients[model].probe(), timeout=interval)
            except Exception:
                self.book.ready.discard(model)
            else:
                self.book.ready.add(model)
                self.book.last_ok[model] = time.monotonic()

        await asyncio.gather(*(one(m) for m in stale))

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # pragma: no cover - a probe round must never kill the loop
                log.exception("probe round failed")
            await asyncio.sleep(self.limits.health_probe_interval_seconds)
