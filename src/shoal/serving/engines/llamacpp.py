"""The llama.cpp engine (``llama-cpp-python``): GGUF models on CPU, for laptops and CI.

One ``Llama`` context per replica serves one generation at a time in a worker thread;
requests beyond it wait in a bounded queue (``max_waiting``, default 16), past which the
engine refuses and the ingress falls back. Chat requests are rendered with the model's own
chat template (GGUF metadata ``tokenizer.chat_template``, or ``engine_args.chat_template``,
or ChatML), as llama.cpp's chat path does.

``engine_args`` are passed to ``llama_cpp.Llama`` (``n_ctx``, ``n_threads``, ...) except
Shoal's own keys: ``max_waiting``, ``chat_template``, and ``tiny_model`` (parameters of
:class:`~shoal.serving.tinymodel.TinyModelSpec`: generate the project's tiny model at the
model's ``file://`` source path, or in the cache, instead of needing weights to exist).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from shoal.serving.engines.base import (
    Chunk,
    EngineError,
    EngineLoad,
    EngineOverloaded,
    GenerationRequest,
)
from shoal.serving.metrics import EngineMetrics
from shoal.serving.tinymodel import TinyModelSpec, ensure_tiny_gguf

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SHOAL_KEYS = {"max_waiting", "chat_template", "tiny_model"}


@dataclass
class _Job:
    request: GenerationRequest
    queue: asyncio.Queue[Chunk | BaseException]
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False


class LlamaCppEngine:
    """llama.cpp behind the engine protocol (see the module docstring)."""

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
        self.max_waiting = int(args.get("max_waiting", 16))
        self.chat_template: str | None = args.get("chat_template")
        tiny = args.get("tiny_model")
        self.tiny = TinyModelSpec(**tiny) if isinstance(tiny, dict) else None
        self.llama_args = {k: v for k, v in args.items() if k not in _SHOAL_KEYS}
        self.model_path = model_path
        self._llm: Any = None
        self._formatter: Any = None
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._running = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def _resolve_path(self) -> str:
        if self.tiny is not None:
            return str(ensure_tiny_gguf(self.tiny, self.model_path))
        if self.model_path is None:
            raise EngineError(
                f"model {self.model}: llamacpp needs local weights (file:// or pvc:// source, "
                f"or a model path); got {self.source!r}"
            )
        if not os.path.exists(self.model_path):
            raise EngineError(f"model {self.model}: no GGUF file at {self.model_path}")
        return self.model_path

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self._resolve_path()
        known = set(inspect.signature(llama_cpp.Llama.__init__).parameters)
        unknown = sorted(set(self.llama_args) - known)
        if unknown:
            raise EngineError(f"model {self.model}: unknown llamacpp engine_args {unknown}")
        kwargs: dict[str, Any] = {"n_ctx": 2048, "verbose": False}
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit() and int(threads) > 0:
            kwargs["n_threads"] = int(threads)
        kwargs.update(self.llama_args)
        llm = llama_cpp.Llama(model_path=path, **kwargs)
        template = self.chat_template or llm.metadata.get("tokenizer.chat_template") or CHATML
        eos = llm.token_eos()
        bos = llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos >= 0 else "",
            bos_token=llm._model.token_get_text(bos) if bos >= 0 else "",
            stop_token_ids=[eos] if eos >= 0 else None,
        )
        self._llm = llm

    async def start(self) -> None:
        if self._llm is None:
            await asyncio.to_thread(self._load)

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineError("llama.cpp model not loaded")

    def load(self) -> EngineLoad:
        return EngineLoad(running=self._running, waiting=self._waiting)

    def _report(self) -> None:
        if self.metrics is not None:
            llm = self._llm
            usage = llm.n_tokens / llm.n_ctx() if llm is not None and llm.n_ctx() else 0.0
            self.metrics.set_load(
                running=self._running, waiting=self._waiting, kv_cache_usage=usage
            )

    # -- generation ---------------------------------------------------------------------------

    def _prompt_tokens(self, request: GenerationRequest) -> tuple[list[int], list[str]]:
        llm = self._llm
        if request.kind == "chat":
            messages = [{**m, "content": _text(m.get("content"))} for m in request.messages]
            result = self._formatter(messages=messages)
            tokens = llm.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
            return tokens, list(request.stop)
        return llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=False), list(
            request.stop
        )

    def _run(self, job: _Job) -> None:
        """Generate in a worker thread, handing chunks to the event loop."""
        llm = self._llm
        put = job.loop.call_soon_threadsafe
        sampled = 0

        def count(_ids: Any, logits: Any) -> Any:
            nonlocal sampled
            sampled += 1
            return logits

        def stop_when_cancelled(_ids: Any, _logits: Any) -> bool:
            return job.cancelled

        try:
            import llama_cpp

            prompt, stop = self._prompt_tokens(job.request)
            if len(prompt) + 1 > llm.n_ctx():
                raise EngineError(
                    f"prompt of {len(prompt)} tokens does not fit the context of {llm.n_ctx()}"
                )
            req = job.request
            stream = llm.create_completion(
                prompt,
                max_tokens=min(req.max_tokens, llm.n_ctx() - len(prompt)),
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                stop=stop,
                seed=req.seed,
                stream=True,
                logits_processor=llama_cpp.LogitsProcessorList([count]),
                stopping_criteria=llama_cpp.StoppingCriteriaList([stop_when_cancelled]),
            )
            finish: str | None = None
            for part in stream:
                if job.cancelled:
                    break
                choice = part["choices"][0]
                finish = choice.get("finish_reason")
                text = choice.get("text") or ""
                if finish is None and text:
                    put(job.queue.put_nowait, Chunk(text))
                elif finish is not None:
                    # Tokens sampled, less the end-of-sequence token when that ended it
                    # (when a stop sequence ended it the count is one low: llama.cpp does not
                    # say which of the two ended the generation).
                    eos_ended = finish == "stop" and sampled > 0
                    completion = sampled - 1 if eos_ended else sampled
                    put(
                        job.queue.put_nowait,
                        Chunk(
                            text,
                            "length" if finish == "length" else "stop",
                            len(prompt),
                            max(completion, 0),
                        ),
                    )
                    return
            if not job.cancelled:
                put(job.queue.put_nowait, EngineError("llama.cpp ended without a finish reason"))
        except BaseException as exc:  # handed to the caller, which raises it
            put(job.queue.put_nowait, exc)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if self._llm is None:
            await self.start()
        if self._waiting >= self.max_waiting:
            raise EngineOverloaded(f"llama.cpp {self.model}: {self._waiting} requests waiting")
        loop = asyncio.get_running_loop()
        job = _Job(request, asyncio.Queue(), loop)
        started = time.perf_counter()
        self._waiting += 1
        self._report()
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        self._report()
        worker = loop.run_in_executor(None, self._run, job)
        try:
            first = True
            last = started
            while True:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise EngineError(f"llama.cpp failed: {item}") from item
                now = time.perf_counter()
                if self.metrics is not None:
                    if first:
                        self.metrics.observe_ttft(now - started)
                    else:
                        self.metrics.observe_inter_token(now - last)
                    if item.finish_reason is not None:
                        self.metrics.observe_finished(
                            now - started,
                            prompt_tokens=item.prompt_tokens or 0,
                            completion_tokens=item.completion_tokens or 0,
                        )
                first, last = False, now
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True  # stops the worker at its next token
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)
            self._running -= 1
            self._lock.release()
            self._report()


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(
        str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
    )
