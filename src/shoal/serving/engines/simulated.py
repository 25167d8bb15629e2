"""The simulated engine: a load-faithful *simulator* of an LLM server, for load tests,
autoscaling tests and capacity planning. It generates placeholder text, not language.

It drives a :class:`~shoal.serving.engines.latency.BatchScheduler` in real time: one asyncio
task runs engine steps (``asyncio.sleep`` for each step's modelled duration) and hands every
produced token to the request it belongs to. Requests beyond the batch wait in a bounded
queue; beyond that the engine refuses (:class:`EngineOverloaded`). It reports vLLM's own
metric names through :class:`~shoal.serving.metrics.EngineMetrics`.

``engine_args`` (all optional): ``step_ms``, ``per_sequence_ms``, ``per_prefill_token_ms``,
``max_batch``, ``max_waiting``, ``kv_cache_tokens``, ``fixed_step_ms`` (fixed latency: every
step takes this long whatever the load), ``output_tokens`` (tokens a generation produces
before it stops on its own; default 32).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

from shoal.serving.engines.base import (
    Chunk,
    EngineError,
    EngineLoad,
    EngineOverloaded,
    GenerationRequest,
    approx_tokens,
    render_messages,
)
from shoal.serving.engines.latency import BatchScheduler, LatencyModel, QueueFull, TokenEvent
from shoal.serving.metrics import EngineMetrics

_WORDS = (
    "simulated", "tokens", "from", "the", "shoal", "load", "simulator", "stand", "in", "for",
    "a", "real", "model", "under", "continuous", "batching", "with", "queueing", "and",
    "prefill",
)  # fmt: skip
_KNOWN_ARGS = {
    "step_ms", "per_sequence_ms", "per_prefill_token_ms", "max_batch", "max_waiting",
    "kv_cache_tokens", "fixed_step_ms", "output_tokens", "max_prefill_tokens_per_step",
}  # fmt: skip


def latency_model_from_args(engine_args: dict[str, Any]) -> LatencyModel:
    """The latency model an engine_args dict describes (unknown keys are an error)."""
    unknown = sorted(set(engine_args) - _KNOWN_ARGS)
    if unknown:
        raise ValueError(f"unknown simulated engine_args: {', '.join(unknown)}")
    limits: dict[str, int] = {
        k: int(engine_args[k])
        for k in ("max_batch", "max_waiting", "kv_cache_tokens", "max_prefill_tokens_per_step")
        if k in engine_args
    }
    if "fixed_step_ms" in engine_args:
        fixed = LatencyModel.fixed(float(engine_args["fixed_step_ms"]) / 1000.0)
        return LatencyModel(
            base_step_seconds=fixed.base_step_seconds,
            per_sequence_seconds=0.0,
            per_prefill_token_seconds=0.0,
            **{"max_batch": fixed.max_batch, "max_waiting": fixed.max_waiting, **limits},
        )
    default = LatencyModel()
    return LatencyModel(
        base_step_seconds=float(engine_args.get("step_ms", default.base_step_seconds * 1e3)) / 1e3,
        per_sequence_seconds=float(
            engine_args.get("per_sequence_ms", default.per_sequence_seconds * 1e3)
        )
        / 1e3,
        per_prefill_token_seconds=float(
            engine_args.get("per_prefill_token_ms", default.per_prefill_token_seconds * 1e3)
        )
        / 1e3,
        **limits,
    )


class SimulatedEngine:
    """A load-faithful simulator of an LLM server (see the module docstring)."""

    def __init__(
        self,
        model: str,
        engine_args: dict[str, Any] | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        args = dict(engine_args or {})
        self.model = model
        self.output_tokens = int(args.pop("output_tokens", 32))
        if self.output_tokens < 1:
            raise ValueError("output_tokens must be >= 1")
        self.latency = latency_model_from_args(args)
        self.scheduler = BatchScheduler(self.latency)
        self.metrics = metrics
        self._queues: dict[str, asyncio.Queue[TokenEvent]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._ids = itertools.count()

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def check_health(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            raise EngineError("simulator loop is not running")

    def load(self) -> EngineLoad:
        return EngineLoad(running=self.scheduler.running, waiting=self.scheduler.waiting)

    async def _run(self) -> None:
        while True:
            if not self.scheduler.busy:
                self._report()
                self._wake.clear()
                await self._wake.wait()
                continue
            result = self.scheduler.step()
            self._report()
            await asyncio.sleep(result.seconds)
            for event in result.tokens:
                queue = self._queues.get(event.request_id)
                if queue is not None:
                    queue.put_nowait(event)

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.set_load(
                running=self.scheduler.running,
                waiting=self.scheduler.waiting,
                kv_cache_usage=self.scheduler.kv_cache_usage,
            )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if self._loop_task is None:
            await self.start()
        text = request.prompt if request.kind == "completion" else render_messages(request.messages)
        prompt_tokens = approx_tokens(text)
        limit = min(request.max_tokens, self.output_tokens)
        finish = "stop" if self.output_tokens <= request.max_tokens else "length"
        key = f"{request.request_id}#{next(self._ids)}"
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        try:
            self.scheduler.submit(key, prompt_tokens, limit)
        except QueueFull as exc:
            raise EngineOverloaded(f"simulator {self.model}: {exc}") from exc
        self._queues[key] = queue
        self._wake.set()
        words = _words(request.request_id)
        start = time.perf_counter()
        last = start
        try:
            while True:
                event = await queue.get()
                now = time.perf_counter()
                if self.metrics is not None:
                    if event.index == 0:
                        self.metrics.observe_ttft(now - start)
                    else:
                        self.metrics.observe_inter_token(now - last)
                last = now
                piece = ("" if event.index == 0 else " ") + next(words)
                if event.finished:
                    if self.metrics is not None:
                        self.metrics.observe_finished(
                            now - start, prompt_tokens=prompt_tokens, completion_tokens=limit
                        )
                    yield Chunk(piece, finish, prompt_tokens, limit)  # type: ignore[arg-type]
                    return
                yield Chunk(piece)
        finally:
            self._queues.pop(key, None)
            self.scheduler.cancel(key)
            self._report()


def _words(seed: str) -> itertools.cycle[str]:
    start = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=2).digest(), "big")
    offset = start % len(_WORDS)
    return itertools.cycle(_WORDS[offset:] + _WORDS[:offset])
