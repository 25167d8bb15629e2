"""The llama.cpp engine's xllamacpp runtime in-process: llama.cpp's own server on a generated
tiny model (deterministic text), and its errors. The real model's answers (tools, JSON
schemas, agents) are tested through the fleet in tests/integration/serving/
test_smollm2_agents.py."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from shoal.serving.engines.base import Chunk, EngineError, GenerationRequest, RequestRejected
from shoal.serving.metrics import EngineMetrics
from shoal.serving.tinymodel import reply_pieces

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("gguf") is None,
    reason="xllamacpp and gguf (serving extra) not installed",
)
REPLY = "Math specialist: 6 times 7 is 42."


def chat(rid: str, max_tokens: int = 64, **params: object) -> GenerationRequest:
    return GenerationRequest(
        rid, "chat", max_tokens, messages=[{"role": "user", "content": "6 x 7?"}], params=params
    )


def test_tiny_model_answers_its_reply_in_parallel_slots(tmp_path: Path) -> None:
    from shoal.serving.engines.xllamacpp import XLlamaCppEngine

    metrics = EngineMetrics("math", "llamacpp", backend="prometheus")
    engine = XLlamaCppEngine(
        "math",
        None,
        {"runtime": "xllamacpp", "tiny_model": {"reply": REPLY, "name": "x"}, "n_parallel": 2},
        str(tmp_path / "m.gguf"),
        metrics,
    )

    async def collect(request: GenerationRequest) -> list[Chunk]:
        return [c async for c in engine.generate(request)]

    async def run() -> tuple[list[Chunk], list[Chunk], list[list[Chunk]]]:
        await engine.start()
        full = await collect(chat("a"))
        short = await collect(GenerationRequest("b", "completion", 3, prompt="anything"))
        both = await asyncio.gather(*(collect(chat(str(i))) for i in range(3)))
        return full, short, list(both)

    full, short, together = asyncio.run(run())
    assert "".join(c.text for c in full) == REPLY
    assert full[-1].finish_reason == "stop"
    # llama.cpp's server counts the end-of-sequence token it sampled
    assert full[-1].completion_tokens == len(reply_pieces(REPLY)) + 1
    assert full[-1].prompt_tokens and full[-1].prompt_tokens > 3
    assert b'"object":"chat.completion"' in (full[-1].data or b"")
    assert "".join(c.text for c in short) == "Math specialist:"
    assert short[-1].finish_reason == "length" and short[-1].completion_tokens == 3
    assert all("".join(c.text for c in answer) == REPLY for answer in together)
    reg = metrics.registry
    assert reg.get_sample_value("llamacpp:request_success_total", {"model_name": "math"}) == 5
    assert engine.load().running == 0 and engine.load().waiting == 0


def test_a_prompt_over_the_window_is_rejected_as_the_clients(tmp_path: Path) -> None:
    from shoal.serving.engines.xllamacpp import XLlamaCppEngine

    engine = XLlamaCppEngine(
        "m", None, {"tiny_model": {"reply": REPLY}, "n_ctx": 64}, str(tmp_path / "m.gguf")
    )
    long = GenerationRequest("c", "completion", 8, prompt="many words here " * 200)

    async def run() -> None:
        async for _ in engine.generate(long):
            pass

    with pytest.raises(RequestRejected) as err:
        asyncio.run(run())
    assert err.value.code == "context_length_exceeded"


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    from shoal.serving.engines.xllamacpp import XLlamaCppEngine

    typo = XLlamaCppEngine("m", None, {"tiny_model": {}, "n_ctxx": 5}, str(tmp_path / "m.gguf"))
    with pytest.raises(EngineError, match="n_ctxx"):
        asyncio.run(typo.start())
    remote = XLlamaCppEngine("m", "hf://org/model", {}, None)
    with pytest.raises(EngineError, match="local weights"):
        asyncio.run(remote.start())
    absent = XLlamaCppEngine("m", "pkg://shoal_no_such_models/m.gguf", {}, None)
    with pytest.raises(EngineError, match="not installed where the model runs"):
        asyncio.run(absent.start())


def test_a_tool_choice_naming_no_tool_is_the_clients_error(tmp_path: Path) -> None:
    from shoal.serving.engines.xllamacpp import XLlamaCppEngine

    engine = XLlamaCppEngine("m", None, {"tiny_model": {"reply": REPLY}}, str(tmp_path / "m.gguf"))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = chat("t", tools=tools, tool_choice={"type": "function", "function": {"name": "g"}})

    async def run() -> None:
        async for _ in engine.generate(request):
            pass

    with pytest.raises(RequestRejected, match="not among the tools"):
        asyncio.run(run())
