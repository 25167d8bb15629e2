"""llama.cpp's own server, in-process (``xllamacpp``): GGUF models on CPU with continuous
batching, from a prebuilt wheel (no compiler, installs in seconds).

The ``llamacpp`` engine with ``engineArgs.runtime: xllamacpp`` (or ``auto`` where
llama-cpp-python is not installed: see :func:`shoal.serving.engines.make_engine`). One
``xllamacpp.Server`` per replica holds ``n_parallel`` slots (default 4) of ``n_ctx`` tokens
each (default 2048: the context window the router sees) and decodes them together; up to
``max_waiting`` more requests (default 16) wait in the server's queue, beyond which the
engine refuses and the ingress falls back. The server answers OpenAI chat completions and
completions itself (the model's chat template, sampling, penalties, seeds, stop, logprobs,
``response_format`` through a grammar built from the JSON schema); each request runs in a
worker thread that hands the server's streamed chunks to the event loop, and stops the
generation when the client goes away.

What Shoal adds on top (:mod:`shoal.serving.structured`): tool calls for any chat template
(a grammar from the tools' parameters, read back into ``tool_calls``, whose arguments are
checked against the function's parameters), a JSON-schema answer checked with a validator
before it is sent, and ``finish_reason: "length"`` for an answer cut by ``max_tokens``
(never a tool call with cut arguments). A source ``pkg://package/file.gguf`` is resolved
here (:mod:`shoal.serving.sources`).

``engine_args``: ``n_ctx``, ``n_parallel``, ``n_threads`` (default ``OMP_NUM_THREADS`` or
1), ``n_batch``, ``max_waiting``, ``chat_template``, ``system_prompt`` (the system message of
a conversation that brings none: one model in several roles), ``runtime``, ``tiny_model``
(see :mod:`shoal.serving.engines.llamacpp`); anything else is refused at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shoal.serving.capabilities import LLAMACPP_EXTRA
from shoal.serving.engines.base import (
    Chunk,
    EngineError,
    EngineLoad,
    EngineOverloaded,
    GenerationRequest,
    RequestRejected,
)
from shoal.serving.engines.llamacpp import Wire, chat_messages
from shoal.serving.metrics import EngineMetrics
from shoal.serving.sources import PKG_SCHEME, SourceMissing, package_file
from shoal.serving.structured import (
    StructuredError,
    ToolPlan,
    plain_messages,
    response_schema,
    schema_violation,
    tool_plan,
)
from shoal.serving.tinymodel import TinyModelSpec, ensure_tiny_gguf

_KNOWN_ARGS = {
    "n_ctx", "n_parallel", "n_threads", "n_batch", "max_waiting", "runtime", "tiny_model",
    "chat_template", "logits_all", "system_prompt",
}  # fmt: skip
#: Client parameters passed to llama.cpp's server as they are.
_PASSED = {"frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs"} | (
    set(LLAMACPP_EXTRA) - {"mirostat_mode", "tfs_z"}
)

Item = tuple[dict[str, Any], tuple[int, int] | None] | BaseException


@dataclass
class _Job:
    request: GenerationRequest
    queue: asyncio.Queue[Item]
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    chunks: list[dict[str, Any]] = field(default_factory=list)


class XLlamaCppEngine:
    """llama.cpp's server behind the engine protocol (see the module docstring)."""

    def __init__(
        self,
        model: str,
        source: str | None,
        engine_args: dict[str, Any] | None = None,
        model_path: str | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        args = dict(engine_args or {})
        self.model = model
        self.source = source
        self.metrics = metrics
        self.args = args
        self.n_ctx = int(args.get("n_ctx", 2048))
        self.n_parallel = max(1, int(args.get("n_parallel", 4)))
        self.max_waiting = int(args.get("max_waiting", 16))
        tiny = args.get("tiny_model")
        self.tiny = TinyModelSpec(**tiny) if isinstance(tiny, dict) else None
        self.model_path = model_path
        self.system_prompt = str(args.get("system_prompt") or "")
        self._server: Any = None
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(
            max_workers=self.n_parallel + self.max_waiting, thread_name_prefix=f"xllama-{model}"
        )
        self._start_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def _resolve_path(self) -> str:
        if self.tiny is not None:
            return str(ensure_tiny_gguf(self.tiny, self.model_path))
        if self.source and self.source.startswith(PKG_SCHEME):
            try:
                return package_file(self.source)
            except SourceMissing as exc:
                raise EngineError(f"model {self.model}: {exc}") from None
        if self.model_path is None:
            raise EngineError(
                f"model {self.model}: llamacpp needs local weights (file://, pvc:// or pkg:// "
                f"source, or a model path); got {self.source!r}"
            )
        if not os.path.exists(self.model_path):
            raise EngineError(f"model {self.model}: no GGUF file at {self.model_path}")
        return self.model_path

    def _load(self) -> None:
        import xllamacpp

        unknown = sorted(set(self.args) - _KNOWN_ARGS)
        if unknown:
            raise EngineError(f"model {self.model}: unknown xllamacpp engine_args {unknown}")
        path = self._resolve_path()
        params = xllamacpp.CommonParams()
        params.model.path = path
        params.n_parallel = self.n_parallel
        params.n_ctx = self.n_ctx * self.n_parallel  # each slot holds n_ctx tokens
        if "n_batch" in self.args:
            params.n_batch = int(self.args["n_batch"])
        threads = self.args.get("n_threads") or os.environ.get("OMP_NUM_THREADS") or 1
        params.cpuparams.n_threads = int(threads)
        params.cpuparams_batch.n_threads = int(threads)
        params.warmup = False
        params.verbosity = -1  # warnings and errors only: no per-request lines in the log
        if self.args.get("chat_template"):
            params.chat_template = str(self.args["chat_template"])
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise EngineError(
                f"model {self.model}: llama.cpp could not load {path}: {exc}"
            ) from exc

    async def start(self) -> None:
        if self._server is None:
            await asyncio.to_thread(self._load_once)

    def _load_once(self) -> None:
        with self._start_lock:
            if self._server is None:
                self._load()

    async def check_health(self) -> None:
        if self._server is None:
            raise EngineError("llama.cpp server not loaded")

    def load(self) -> EngineLoad:
        running = min(self._in_flight, self.n_parallel)
        return EngineLoad(running=running, waiting=self._in_flight - running)

    def _report(self) -> None:
        if self.metrics is not None:
            load = self.load()
            self.metrics.set_load(running=load.running, waiting=load.waiting, kv_cache_usage=0.0)

    # -- the request ----------------------------------------------------------------------------

    def _body(self, req: GenerationRequest, plan: ToolPlan | None) -> dict[str, Any]:
        """The OpenAI body for llama.cpp's server (always streamed, with usage)."""
        params = req.params
        body: dict[str, Any] = {
            k: v for k, v in params.items() if k in _PASSED and v is not None and v is not False
        }
        if "mirostat_mode" in params:
            body["mirostat"] = int(params["mirostat_mode"])
        body.update(max_tokens=req.max_tokens, stream=True, stream_options={"include_usage": True})
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = req.seed
        if req.kind == "completion":
            body["prompt"] = req.prompt
            if params.get("logprobs") is not None:
                body["logprobs"] = int(params["logprobs"])
            for key in ("echo", "suffix"):
                if params.get(key):
                    body[key] = params[key]
            return body
        given = list(req.messages)
        if self.system_prompt and not any(m.get("role") in ("system", "developer") for m in given):
            given.insert(0, {"role": "system", "content": self.system_prompt})
        if plan is not None:
            messages = plain_messages(given)
            if messages and messages[0]["role"] == "system":
                first = messages[0]
                messages[0] = {**first, "content": f"{first['content']}\n\n{plan.system}"}
            else:
                messages.insert(0, {"role": "system", "content": plan.system})
            body["messages"] = messages
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"schema": plan.schema},
            }
        else:
            body["messages"] = chat_messages(given)
            fmt = params.get("response_format")
            if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
                if fmt.get("type") == "json_schema":
                    body["response_format"] = {
                        "type": "json_schema",
                        "json_schema": {"schema": response_schema(params)},
                    }
                else:
                    body["response_format"] = {"type": "json_object"}
        return body

    def _run(self, job: _Job, body: dict[str, Any]) -> None:
        """Generate in a worker thread, handing the server's chunks to the event loop."""
        put = job.loop.call_soon_threadsafe
        usage: dict[str, Any] = {}
        error: dict[str, Any] = {}
        held: list[dict[str, Any]] = []

        def on_chunk(chunk: Any) -> bool:
            if job.cancelled:
                return True
            if not isinstance(chunk, dict):
                return False
            if "error" in chunk or ("code" in chunk and "choices" not in chunk):
                error.update(chunk.get("error") or chunk)
                return True
            if chunk.get("usage"):
                usage.update(chunk["usage"])
            if not chunk.get("choices"):
                return False
            if held:
                put(job.queue.put_nowait, (held.pop(), None))
            held.append(chunk)
            return False

        try:
            server = self._server
            if job.request.kind == "chat":
                server.handle_chat_completions(body, on_chunk)
            else:
                server.handle_completions(body, on_chunk)
            if job.cancelled:
                return
            if error:
                put(job.queue.put_nowait, self._error(error))
                return
            if not held or _finish(held[-1]) is None:
                raise EngineError("llama.cpp ended without a finish reason")
            counts = (int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
            put(job.queue.put_nowait, (held[-1], counts))
        except BaseException as exc:  # handed to the caller, which raises it
            put(job.queue.put_nowait, exc)

    def _error(self, error: dict[str, Any]) -> BaseException:
        message = str(error.get("message") or error)
        kind = str(error.get("type") or "")
        if "context" in kind or "context" in message:
            return RequestRejected(
                f"model {self.model}: {message}", code="context_length_exceeded", param="messages"
            )
        if int(error.get("code") or 500) < 500:
            return RequestRejected(f"model {self.model}: {message}")
        return EngineError(f"model {self.model}: {message}")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if self._server is None:
            await self.start()
        if self._in_flight >= self.n_parallel + self.max_waiting:
            raise EngineOverloaded(f"llama.cpp {self.model}: {self._in_flight} requests in flight")
        try:
            plan = (
                tool_plan(request.params, request.parallel_tool_calls)
                if request.kind == "chat"
                else None
            )
        except StructuredError as exc:
            raise RequestRejected(f"model {self.model}: {exc}", param="tool_choice") from None
        schema = response_schema(request.params) if plan is None else None
        body = self._body(request, plan)
        loop = asyncio.get_running_loop()
        job = _Job(request, asyncio.Queue(), loop)
        started = time.perf_counter()
        self._in_flight += 1
        self._report()
        worker = loop.run_in_executor(self._pool, self._run, job, body)
        wire = Wire(request, self.model)
        # Structured answers are checked whole before any of it is sent.
        buffered: list[dict[str, Any]] | None = [] if plan or schema else None
        try:
            first, last = True, started
            while True:
                item = await job.queue.get()
                if isinstance(item, RequestRejected):
                    raise item
                if isinstance(item, BaseException):
                    raise EngineError(f"llama.cpp failed: {item}") from item
                part, counts = item
                if buffered is not None:
                    buffered.append(part)
                    if counts is None:
                        continue
                    parts = self._structured(buffered, plan, schema)
                    for extra in parts[:-1]:
                        wire.chunk(extra, None)
                    part = parts[-1]
                chunk = wire.chunk(part, counts)
                if chunk is None:
                    continue
                now = time.perf_counter()
                if self.metrics is not None:
                    self.metrics.observe_chunk(
                        started=started,
                        previous=None if first else last,
                        now=now,
                        finished=chunk.finish_reason is not None,
                        prompt_tokens=chunk.prompt_tokens or 0,
                        completion_tokens=chunk.completion_tokens or 0,
                    )
                first, last = False, now
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            job.cancelled = True  # the server stops this generation at its next token
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)
            self._in_flight -= 1
            self._report()

    def _structured(
        self, parts: list[dict[str, Any]], plan: ToolPlan | None, schema: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        """A whole structured answer as the chunks to send: checked, and for a tool plan
        rewritten into ``tool_calls`` (a cut answer is sent as it is, with "length")."""
        text = "".join(_content(p) for p in parts)
        finish = _finish(parts[-1]) or "stop"
        head = {k: parts[-1].get(k) for k in ("id", "created", "model")}
        head["object"] = "chat.completion.chunk"
        if finish == "length":
            delta = {"role": "assistant", "content": "" if plan is not None else text}
            return _two(head, delta, "length")
        try:
            if plan is not None:
                answer, calls = plan.parse(text)
                if calls:
                    indexed = [{**c, "index": i} for i, c in enumerate(calls)]
                    return _two(head, {"role": "assistant", "tool_calls": indexed}, "tool_calls")
                return _two(head, {"role": "assistant", "content": answer}, "stop")
            assert schema is not None
            problem = schema_violation(schema, text)
            if problem is not None:
                raise StructuredError(f"the answer is off the response_format schema {problem}")
        except StructuredError as exc:
            raise EngineError(f"model {self.model}: {exc}") from None
        return [*parts[:-1], parts[-1]] if len(parts) > 1 else parts


def _two(head: dict[str, Any], delta: dict[str, Any], finish: str) -> list[dict[str, Any]]:
    return [
        {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
    ]


def _content(part: dict[str, Any]) -> str:
    choice = (part.get("choices") or [{}])[0]
    return str((choice.get("delta") or {}).get("content") or choice.get("text") or "")


def _finish(part: dict[str, Any]) -> str | None:
    choices = part.get("choices") or []
    return choices[0].get("finish_reason") if choices else None
