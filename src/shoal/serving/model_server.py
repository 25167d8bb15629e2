"""A model deployment: one in-process engine (llama.cpp or the simulator) behind Ray Serve.

The ingress calls :meth:`ModelServer.stream` through a deployment handle. Streamed requests
get one :class:`~shoal.serving.engines.base.Chunk` per engine chunk; non-streamed ones ask
for ``coalesce=True`` and get two items only (the first chunk, so the ingress sees the first
token and can time out early, then everything else in one chunk), which keeps Ray's
per-item cost off the unary path.

The deployment also answers the OpenAI API itself over HTTP (:meth:`ModelServer.__call__`)
for its one model, without routing: that is "calling the engine deployment directly", the
baseline of the serving benchmark and a handy debugging path.

Ray Serve calls :meth:`check_health` periodically and replaces a replica whose engine died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.api.v1alpha1 import ModelSpec
from shoal.contract import ServingLimits
from shoal.serving import http
from shoal.serving.engines import make_engine
from shoal.serving.engines.base import Chunk, EngineLoad, GenerationRequest
from shoal.serving.metrics import Backend

log = logging.getLogger("shoal.serving.model")


class ModelServer:
    """One replica of one model (wrapped with ``serve.deployment`` by the app builder)."""

    def __init__(
        self,
        model: dict[str, Any],
        model_path: str | None = None,
        limits: dict[str, Any] | None = None,
        metrics_backend: Backend | None = "ray",
    ) -> None:
        self.spec = ModelSpec.model_validate(model)
        self.limits = ServingLimits.model_validate(limits or {})
        self.engine = make_engine(self.spec, model_path, metrics_backend)
        self._started = False

    async def _ensure_started(self) -> None:
        if not self._started:
            started = time.perf_counter()
            await self.engine.start()
            self._started = True
            log.info(
                "model %s (%s) ready in %.2fs",
                self.spec.name,
                self.spec.engine,
                time.perf_counter() - started,
            )

    async def stream(
        self, request: GenerationRequest, coalesce: bool = False
    ) -> AsyncIterator[Chunk]:
        """Generate. Streaming, yield chunks through :func:`merged` (the first and the
        last at once, the others merged at most every ``stream_interval_ms``). With
        ``coalesce`` (unary requests), yield the first chunk, then the rest as one chunk."""
        await self._ensure_started()
        if not coalesce:
            async for chunk in merged(
                self.engine.generate(request), self.limits.stream_interval_ms
            ):
                yield chunk
            return
        first = True
        parts: list[str] = []
        async for chunk in self.engine.generate(request):
            if first:
                first = False
                yield chunk
                if chunk.finish_reason is not None:
                    return
                continue
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                yield Chunk(
                    "".join(parts),
                    chunk.finish_reason,
                    chunk.prompt_tokens,
                    chunk.completion_tokens,
                    data=chunk.data,  # an engine's own unary body comes whole in the last
                )
                return

    async def probe(self) -> EngineLoad:
        """Cheap readiness probe for the ingress: the engine's current load."""
        await self._ensure_started()
        return self.engine.load()

    async def check_health(self) -> None:
        """Called by Ray Serve; raising marks this replica unhealthy."""
        if self._started:
            await self.engine.check_health()

    async def __call__(self, request: Request) -> Response:
        """The OpenAI API for this one model, no routing (the benchmark's direct path)."""
        await self._ensure_started()
        path = request.url.path.rstrip("/")
        try:
            if request.method == "GET" and path.endswith("/v1/models"):
                return http.json_response(http.models_body([self.spec.name]))
            api = http.api_of(path)
            if api is None or request.method != "POST":
                raise http.not_found(path)
            body = await http.read_body(request, self.limits.max_body_bytes)
            parsed = http.parse(api, body, self.limits)
            rid = http.new_id(api)
            gen = http.generation(parsed, rid, self.limits, self.spec.name)
            chunks = merged(self.engine.generate(gen), self.limits.stream_interval_ms)
            first = await anext(chunks)
            headers = {"x-shoal-model": self.spec.name}
            return await http.respond(
                api,
                parsed,
                self.spec.name,
                first,
                chunks,
                headers,
                self.limits.request_timeout_seconds,
            )
        except http.ApiError as err:
            return http.error_response(err)


async def merged(source: AsyncIterator[Chunk], interval_ms: float = 0.0) -> AsyncIterator[Chunk]:
    """``source``'s chunks, merged (texts joined; finish reason and counts from the last).

    The first chunk and the last one go out at once. In between, chunks that arrive while
    the consumer is busy are merged, and with ``interval_ms`` a merged chunk goes out at most
    that often. Either way fewer, larger messages cross Ray when a replica is busy.
    """
    queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()
    interval = interval_ms / 1000.0

    async def pump() -> None:
        try:
            async for chunk in source:
                queue.put_nowait(chunk)
            queue.put_nowait(None)
        except BaseException as exc:  # handed to the consumer
            queue.put_nowait(exc)

    loop = asyncio.get_running_loop()
    task = loop.create_task(pump())
    last_sent = -1e18
    try:
        while True:
            batch: list[Chunk] = []
            ended: BaseException | bool | None = False  # False: going on; None: source done
            item = await queue.get()
            while True:
                if item is None or isinstance(item, BaseException):
                    ended = item
                    break
                batch.append(item)
                if item.finish_reason is not None:
                    break
                if not queue.empty():
                    item = queue.get_nowait()
                    continue
                wait = last_sent + interval - loop.time()
                if wait <= 0:
                    break
                try:
                    async with asyncio.timeout(wait):
                        item = await queue.get()
                except TimeoutError:
                    break
            if batch:
                last_sent = loop.time()
                yield _merge(batch)
                if batch[-1].finish_reason is not None:
                    return
            if ended is None:
                return
            if isinstance(ended, BaseException):
                raise ended
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def _merge(batch: list[Chunk]) -> Chunk:
    if len(batch) == 1:
        return batch[0]
    last = batch[-1]
    data = [c.data for c in batch if c.data is not None]
    return Chunk(
        "".join(c.text for c in batch),
        last.finish_reason,
        last.prompt_tokens,
        last.completion_tokens,
        data=b"".join(data) if data else None,  # SSE events concatenate
    )
