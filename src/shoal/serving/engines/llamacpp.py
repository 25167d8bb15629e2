"""The llama.cpp engine (``llama-cpp-python``): GGUF models on CPU, for laptops and CI.

One ``Llama`` context per replica serves one generation at a time in a worker thread;
requests beyond it wait in a bounded queue (``max_waiting``, default 16), past which the
engine refuses and the ingress falls back. Chat requests are rendered with the model's own
chat template (GGUF metadata ``tokenizer.chat_template``, or ``engine_args.chat_template``,
or ChatML) and answered by llama-cpp-python's own chat completion, which honours the
client's tools (a grammar from a named function's parameters, or its function-calling chat
format for ``tool_choice: auto``), ``response_format`` (a grammar from the JSON schema) and
logprobs (with ``logits_all``). The engine writes the answer in OpenAI's wire format itself
(SSE events, or one body at the end of a unary request).

``engine_args`` are passed to ``llama_cpp.Llama`` (``n_ctx``, ``n_threads``, ...) except
Shoal's own keys: ``max_waiting``, ``chat_template``, and ``tiny_model`` (parameters of
:class:`~shoal.serving.tinymodel.TinyModelSpec`: generate the project's tiny model at the
model's ``file://`` source path, or in the cache, instead of needing weights to exist).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from shoal.contract.variants import LlamaCppSpeculation
from shoal.serving import openai_api
from shoal.serving.capabilities import LLAMACPP_EXTRA
from shoal.serving.engines.base import (
    Chunk,
    EngineError,
    EngineLoad,
    EngineOverloaded,
    GenerationRequest,
    RequestRejected,
)
from shoal.serving.engines.llamacpp_speculative import check_gguf_type, draft_model
from shoal.serving.metrics import EngineMetrics
from shoal.serving.sources import PKG_SCHEME, SourceMissing, package_file
from shoal.serving.tinymodel import TinyModelSpec, ensure_tiny_gguf

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SHOAL_KEYS = {"max_waiting", "chat_template", "tiny_model", "runtime"}


@dataclass
class _Job:
    request: GenerationRequest
    queue: asyncio.Queue[tuple[dict[str, Any], tuple[int, int] | None] | BaseException]
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
        speculation: LlamaCppSpeculation | None = None,
        gguf_type: str | None = None,
    ) -> None:
        args = dict(engine_args or {})
        #: The fleet's speculative decoding and declared GGUF type (see llamacpp_speculative).
        self.speculation = speculation
        self.gguf_type = gguf_type
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
        self._handler: Any = None
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._running = 0

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
        import llama_cpp
        from llama_cpp.llama_chat_format import (
            Jinja2ChatFormatter,
            chat_formatter_to_chat_completion_handler,
        )

        path = self._resolve_path()
        known = set(inspect.signature(llama_cpp.Llama.__init__).parameters)
        unknown = sorted(set(self.llama_args) - known)
        if unknown:
            raise EngineError(f"model {self.model}: unknown llamacpp engine_args {unknown}")
        # Flash attention, as llama.cpp's own server (xllamacpp) has it: without it, llama.cpp's
        # CPU attention computes a batch of queries differently from one query (SmolLM2 Q4_1:
        # logits apart by up to 1.4), so speculative decoding's batched verification flips
        # greedy picks at near ties; with it, both give the same logits bit for bit
        # (docs/serving.md, "Quantisation, speculative decoding and LoRA").
        kwargs: dict[str, Any] = {"n_ctx": 2048, "verbose": False, "flash_attn": True}
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit() and int(threads) > 0:
            kwargs["n_threads"] = int(threads)
        kwargs.update(self.llama_args)
        check_gguf_type(self.model, path, self.gguf_type)
        if self.speculation is not None:
            kwargs["draft_model"] = draft_model(
                self.speculation, int(kwargs["n_ctx"]), kwargs.get("n_threads")
            )
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
        self._handler = chat_formatter_to_chat_completion_handler(self._formatter)
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

    def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The prompt's tokens as the model's chat template renders it (for the context check
        and the usage count; a tool-calling prompt adds a little)."""
        llm = self._llm
        if request.kind == "chat":
            result = self._formatter(messages=chat_messages(request.messages))
            return list(
                llm.tokenize(
                    result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
                )
            )
        return list(llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=False))

    def _sampling(self, req: GenerationRequest, room: int) -> dict[str, Any]:
        # llama.cpp's C sampler takes floats and ints exactly: JSON's 1 and 1.0 are cast.
        params = {
            k: (_INTS.get(k, float)(v) if k in _NUMBERS else v)
            for k, v in req.params.items()
            if k in _PASSED and v is not None  # null means llama.cpp's own default
        }
        return {
            **params,
            "max_tokens": min(req.max_tokens, room),
            "temperature": 1.0 if req.temperature is None else float(req.temperature),
            "top_p": 1.0 if req.top_p is None else float(req.top_p),
            "stop": list(req.stop),
            "seed": req.seed,
            "stream": True,
            "model": req.model_name or self.model,
        }

    def _chat(self, req: GenerationRequest, room: int, processors: Any) -> Any:
        """llama-cpp-python's own chat completion for ``req``: tools, response_format and
        logprobs as its OpenAI server takes them (see docs/serving.md for the table)."""
        from llama_cpp import llama_chat_format

        kwargs = self._sampling(req, room)
        kwargs["messages"] = chat_messages(req.messages)
        kwargs["logits_processor"] = processors
        params = req.params
        fmt = params.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            # llama.cpp constrains output with a grammar from the schema (json_object+schema).
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            kwargs["response_format"] = fmt
        if params.get("logprobs"):
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = int(params.get("top_logprobs") or 0)
        tools = params.get("tools")
        choice = params.get("tool_choice")
        handler = self._handler
        if tools and choice != "none":
            if choice == "required" and len(tools) == 1:
                choice = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
            if choice == "required":
                raise RequestRejected(
                    f"model {self.model}: tool_choice 'required' with several tools is not "
                    "supported by llama.cpp; name the function",
                    param="tool_choice",
                )
            kwargs["tools"] = tools
            kwargs["tool_choice"] = choice
            if not isinstance(choice, dict):
                # "auto": the model chooses between answering and calling, through
                # llama-cpp-python's function-calling chat format, which answers unstreamed.
                kwargs.update(tool_choice="auto", stream=False)
                whole = llama_chat_format.chatml_function_calling(llama=self._llm, **kwargs)
                return _chunks_of(whole)
        return handler(llama=self._llm, **kwargs)

    def _completion(self, req: GenerationRequest, room: int, processors: Any, stop: Any) -> Any:
        kwargs = self._sampling(req, room)
        if req.params.get("logprobs") is not None:
            kwargs["logprobs"] = int(req.params["logprobs"])
        return self._llm.create_completion(
            req.prompt, logits_processor=processors, stopping_criteria=stop, **kwargs
        )

    def _run(self, job: _Job) -> None:
        """Generate in a worker thread, handing llama.cpp's OpenAI chunks to the event loop;
        the last one comes with the prompt and completion token counts."""
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

            req = job.request
            prompt = self._prompt_tokens(req)
            if len(prompt) + 1 > llm.n_ctx():
                raise RequestRejected(
                    f"This model's maximum context length is {llm.n_ctx()} tokens; the prompt "
                    f"has {len(prompt)}.",
                    code="context_length_exceeded",
                    param="messages" if req.kind == "chat" else "prompt",
                )
            room = llm.n_ctx() - len(prompt)
            processors = llama_cpp.LogitsProcessorList([count])
            if req.params.get("logit_bias"):
                processors.append(_bias_processor(req.params["logit_bias"]))
            if req.kind == "chat":
                stream = self._chat(req, room, processors)
            else:
                stop = llama_cpp.StoppingCriteriaList([stop_when_cancelled])
                stream = self._completion(req, room, processors, stop)
            held: dict[str, Any] | None = None
            for part in stream:
                if job.cancelled:
                    return
                if held is not None:
                    put(job.queue.put_nowait, (held, None))
                held = part
                if _finish(part) is not None:
                    break
            if job.cancelled:
                return
            if held is None or _finish(held) is None:
                raise EngineError("llama.cpp ended without a finish reason")
            # Tokens sampled, less the end-of-sequence token when that ended it (when a stop
            # sequence ended it the count is one low: llama.cpp does not say which it was).
            completion = sampled - 1 if _finish(held) == "stop" and sampled > 0 else sampled
            if _finish(held) == "tool_calls" and sampled >= min(req.max_tokens, room):
                # llama-cpp-python says "tool_calls" for a call cut by max_tokens: its
                # arguments are cut JSON, so the answer ended for its length.
                held = {**held, "choices": [{**held["choices"][0], "finish_reason": "length"}]}
            put(job.queue.put_nowait, (held, (len(prompt), max(completion, 0))))
        except ValueError as exc:  # llama-cpp-python's word for a request it cannot serve
            put(job.queue.put_nowait, _rejected(self.model, exc))
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
        wire = Wire(request, self.model)
        try:
            first = True
            last = started
            while True:
                item = await job.queue.get()
                if isinstance(item, RequestRejected):
                    raise item
                if isinstance(item, BaseException):
                    raise EngineError(f"llama.cpp failed: {item}") from item
                chunk = wire.chunk(*item)
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
            job.cancelled = True  # stops the worker at its next token
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)
            self._running -= 1
            self._lock.release()
            self._report()


#: Parameters handed to llama-cpp-python as they are (the others are mapped in _chat).
_PASSED = {"frequency_penalty", "presence_penalty", "suffix"} | set(LLAMACPP_EXTRA)
#: Of those, the numbers (floats unless listed in _INTS).
_NUMBERS = _PASSED - {"suffix"}
_INTS: dict[str, Any] = {"top_k": int, "mirostat_mode": int}


def _bias_processor(logit_bias: dict[str, Any]) -> Any:
    """OpenAI's ``logit_bias`` (token id -> -100..100, added to that token's logit), applied
    by Shoal: llama-cpp-python drops every other logits processor when it is given one."""
    bias = {int(k): float(v) for k, v in logit_bias.items()}

    def apply(_ids: Any, logits: Any) -> Any:
        for token, value in bias.items():
            if 0 <= token < len(logits):
                logits[token] += value
        return logits

    return apply


def _chunks_of(whole: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A whole chat completion as the chunks a stream of it would have been."""
    head = {k: whole.get(k) for k in ("id", "model", "created")}
    head["object"] = "chat.completion.chunk"
    for choice in whole.get("choices") or []:
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant"}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{**c, "index": i} for i, c in enumerate(message["tool_calls"])]
        yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        finish = choice.get("finish_reason") or "stop"
        yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}


def _finish(part: dict[str, Any]) -> str | None:
    choices = part.get("choices") or []
    return choices[0].get("finish_reason") if choices else None


def _rejected(model: str, exc: ValueError) -> RequestRejected:
    message = str(exc)
    if "context window" in message or "exceed" in message:
        return RequestRejected(
            f"model {model}: {message}", code="context_length_exceeded", param="messages"
        )
    return RequestRejected(f"model {model}: {message}")


class Wire:
    """Turns llama.cpp's OpenAI chunks into engine chunks with the answer's wire bytes: SSE
    events when the client streams, one JSON body at the end when not."""

    def __init__(self, request: GenerationRequest, model: str) -> None:
        self.request = request
        self.rid = request.request_id
        self.model = request.model_name or model
        self.created = request.created or int(time.time())
        self.parts: list[dict[str, Any]] = []
        self.pending = b""  # the role event of a chat stream, sent with the first token
        self.calls_named: set[int] = set()
        # echo: llama.cpp echoes only unstreamed completions; Shoal streams them, so it puts
        # the prompt in front of the first text itself.
        self.echo = request.prompt if request.kind == "completion" and request.params.get(
            "echo"
        ) else ""  # fmt: skip

    def _normalise(self, part: dict[str, Any]) -> dict[str, Any]:
        """The part as OpenAI streams it: this answer's id, name and time; a tool call's
        name and id in its first delta only (llama.cpp repeats them in every delta); the
        echoed prompt in front of the first text."""
        part = {**part, "id": self.rid, "model": self.model, "created": self.created}
        choices = [dict(c) for c in part.get("choices") or []]
        for choice in choices:
            delta = choice.get("delta")
            if delta and delta.get("tool_calls"):
                calls = []
                for call in delta["tool_calls"]:
                    index = int(call.get("index", 0))
                    if index in self.calls_named:
                        call = {
                            "index": index,
                            "function": {"arguments": (call.get("function") or {}).get(
                                "arguments", ""
                            )},
                        }  # fmt: skip
                    self.calls_named.add(index)
                    calls.append(call)
                choice["delta"] = {**delta, "tool_calls": calls}
            if self.echo and "text" in choice:
                choice["text"], self.echo = self.echo + (choice.get("text") or ""), ""
        part["choices"] = choices
        return part

    def chunk(self, part: dict[str, Any], counts: tuple[int, int] | None) -> Chunk | None:
        req = self.request
        part = self._normalise(part)
        choice = (part.get("choices") or [{}])[0]
        text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
        if counts is None:
            if not req.stream:
                self.parts.append(part)
                return Chunk(text)
            if (
                req.kind == "chat"
                and not text
                and not (choice.get("delta") or {}).get("tool_calls")
            ):
                self.pending += openai_api.sse(part)
                return None
            data, self.pending = self.pending + openai_api.sse(part), b""
            return Chunk(text, data=data)
        prompt, completion = counts
        use = openai_api.usage(prompt, completion)
        finish = _finish(part)
        reason = finish if finish in ("stop", "length", "tool_calls") else "stop"
        if req.stream:
            data = self.pending + openai_api.sse(part)
            if req.include_usage:
                data += openai_api.usage_event(req.kind, self.rid, self.created, self.model, use)
        else:
            self.parts.append(part)
            build = (
                openai_api.assemble_chat if req.kind == "chat" else openai_api.assemble_completion
            )
            body = build(self.parts, self.rid, self.created, self.model, use)
            data = json.dumps(body, separators=(",", ":")).encode()
        return Chunk(text, reason, prompt, completion, data=data)  # type: ignore[arg-type]


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a chat template: text content (parts joined), tool calls kept."""
    return [{**m, "content": _text(m.get("content"))} for m in messages]


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(
        str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
    )
