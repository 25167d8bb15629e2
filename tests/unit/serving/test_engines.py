"""Engines in-process: the llama.cpp engine on a generated tiny model, and the simulator."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from shoal.serving.engines.base import Chunk, Engine, EngineOverloaded, GenerationRequest
from shoal.serving.engines.simulated import SimulatedEngine, latency_model_from_args
from shoal.serving.metrics import EngineMetrics
from shoal.serving.tinymodel import TinyModelSpec, ensure_tiny_gguf, reply_pieces

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
    reason="llama-cpp-python and gguf (serving extras) not installed",
)
REPLY = "Math specialist: 6 times 7 is 42."


async def collect(engine: Engine, request: GenerationRequest) -> list[Chunk]:
    return [c async for c in engine.generate(request)]


def chat(rid: str, max_tokens: int = 64, text: str = "What is 6 times 7?") -> GenerationRequest:
    return GenerationRequest(rid, "chat", max_tokens, messages=[{"role": "user", "content": text}])


def test_reply_pieces() -> None:
    assert reply_pieces("Hi there, you.") == ["Hi", "\u2581there", ",", "\u2581you", "."]
    with pytest.raises(ValueError, match="distinct"):
        reply_pieces("we go, go")
    with pytest.raises(ValueError):
        reply_pieces("   ")


@needs_llama
def test_tiny_model_is_generated_once_and_answers_its_reply(tmp_path: Path) -> None:
    from shoal.serving.engines.llamacpp import LlamaCppEngine

    spec = TinyModelSpec(reply=REPLY, name="t")
    path = ensure_tiny_gguf(spec, tmp_path / "m.gguf")
    mtime = path.stat().st_mtime_ns
    assert ensure_tiny_gguf(spec, path).stat().st_mtime_ns == mtime  # cached
    assert 100_000 < path.stat().st_size < 2_000_000

    metrics = EngineMetrics("math", "llamacpp", backend="prometheus")
    engine = LlamaCppEngine(
        "math", f"file://{path}", {"tiny_model": {"reply": REPLY, "name": "t"}}, str(path), metrics
    )

    async def run() -> tuple[list[Chunk], list[Chunk], list[Chunk]]:
        await engine.start()
        full = await collect(engine, chat("a"))
        short = await collect(
            engine, GenerationRequest("b", "completion", 3, prompt="anything at all")
        )
        # two at once: one runs, the other waits its turn (one context per replica)
        both = await asyncio.gather(collect(engine, chat("c")), collect(engine, chat("d")))
        return full, short, both[1]

    full, short, queued = asyncio.run(run())
    assert "".join(c.text for c in full) == REPLY
    assert full[-1].finish_reason == "stop"
    assert full[-1].completion_tokens == len(reply_pieces(REPLY))
    assert full[-1].prompt_tokens and full[-1].prompt_tokens > 10
    assert "".join(c.text for c in short) == "Math specialist:"
    assert short[-1].finish_reason == "length" and short[-1].completion_tokens == 3
    assert "".join(c.text for c in queued) == REPLY
    reg = metrics.registry
    assert reg.get_sample_value("llamacpp:request_success_total", {"model_name": "math"}) == 4


@needs_llama
def test_llamacpp_engine_refuses_beyond_its_queue(tmp_path: Path) -> None:
    from shoal.serving.engines.llamacpp import LlamaCppEngine

    path = tmp_path / "m.gguf"
    engine = LlamaCppEngine(
        "m", None, {"tiny_model": {"reply": REPLY}, "max_waiting": 1}, str(path)
    )

    async def run() -> list[object]:
        await engine.start()
        return await asyncio.gather(
            *(collect(engine, chat(str(i))) for i in range(4)), return_exceptions=True
        )

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, EngineOverloaded)]
    assert refused and len(refused) < 4


@needs_llama
def test_llamacpp_engine_rejects_unknown_args(tmp_path: Path) -> None:
    from shoal.serving.engines.base import EngineError
    from shoal.serving.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("m", None, {"tiny_model": {}, "n_ctxx": 5}, str(tmp_path / "m.gguf"))
    with pytest.raises(EngineError, match="n_ctxx"):
        asyncio.run(engine.start())
    missing = LlamaCppEngine("m", "hf://org/model", {}, None)
    with pytest.raises(EngineError, match="local weights"):
        asyncio.run(missing.start())


def test_simulator_reports_vllm_metrics_and_counts_tokens() -> None:
    metrics = EngineMetrics("sim", "vllm", backend="prometheus")
    engine = SimulatedEngine("sim", {"fixed_step_ms": 5, "output_tokens": 6}, metrics)

    async def run() -> list[list[Chunk]]:
        await engine.start()
        return list(
            await asyncio.gather(
                collect(engine, chat("a", max_tokens=100)),
                collect(engine, GenerationRequest("b", "completion", 4, prompt="x" * 400)),
            )
        )

    done, cut = asyncio.run(run())
    assert done[-1].finish_reason == "stop" and done[-1].completion_tokens == 6
    assert cut[-1].finish_reason == "length" and cut[-1].completion_tokens == 4
    assert cut[-1].prompt_tokens == 100
    reg = metrics.registry
    labels = {"model_name": "sim"}
    assert reg.get_sample_value("vllm:request_success_total", labels) == 2
    assert reg.get_sample_value("vllm:generation_tokens_total", labels) == 10
    assert reg.get_sample_value("vllm:time_to_first_token_seconds_count", labels) == 2
    assert reg.get_sample_value("vllm:num_requests_running", labels) == 0


def test_simulator_args_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown"):
        latency_model_from_args({"stepms": 3})
    fixed = latency_model_from_args({"fixed_step_ms": 20, "max_batch": 8})
    assert fixed.step_seconds(8, 10_000) == pytest.approx(0.02) and fixed.max_batch == 8
