"""A LoRA adapter through the fleet, from a local S3 store: tokens per second with and without.

The project's tiny Hugging Face Llama under vLLM's CPU build, one replica, with the
project's generated adapter (:func:`shoal.serving.tinyhf.write_tiny_lora`) in moto's S3
server (:mod:`shoal.devtools.testing.s3`), the app built as the operator renders it
(:func:`shoal.serving.app.build_app`). Through the fleet's endpoint, one request at a time,
greedy, ``ignore_eos``: the base model (``tiny``), the adapter by name (``tiny:tiny-lora``)
and the adapter routed (``auto``, a static order that puts it first). Also the adapter's
first request (download from the store and load into vLLM), and whether the adapter's tokens
differ from the base model's (they must: the benchmark fails otherwise).

A tiny model on a shared CPU: the figures say what the LoRA path costs around the engine
here, nothing about a 7B on a GPU (where vLLM's punica kernels batch many adapters).
Run under ``flock /tmp/shoal-ray.lock``. Prints a table, then as its last line one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 times 7?",
    "def add(a, b):\n    return a + b\n",
    "Once upon a time there was a small model",
]
ADAPTER = "tiny-lora"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fleet_args(model: Path, store: Any) -> Any:
    from shoal.contract import BuildArgs

    return BuildArgs.parse(
        {
            "fleet_name": "lora",
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "cpu", "costPerReplicaHour": "0.50"}],
                "models": [{
                    "name": "tiny", "engine": "vllm", "source": f"file://{model}", "tier": "cpu",
                    "resources": {"cpu": "1"}, "minReplicas": 1, "maxReplicas": 1,
                    "engineArgs": {"dtype": "float32", "max_model_len": 256,
                                   "enforce_eager": True, "max_lora_rank": 8},
                    "loraAdapters": [{"name": ADAPTER}],
                    "loraStore": {"uri": "s3://adapters/tiny", "endpoint": store.endpoint,
                                  "region": store.region,
                                  "credentialsSecretRef": {"name": "s", "key": "credentials"}},
                }],
            },
            "policy": {"strategy": "static", "staticOrder": [f"tiny:{ADAPTER}", "tiny"]},
            "limits": {"max_tokens": 256, "first_token_timeout_seconds": 300},
        }
    )  # fmt: skip


def complete(base: str, model: str, prompt: str, tokens: int) -> tuple[str, int, float]:
    started = time.perf_counter()
    res = httpx.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
              "ignore_eos": True},
        timeout=600,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if res.status_code != 200:
        raise SystemExit(f"{model}: {res.status_code} {res.text[:300]}")
    body = res.json()
    return body["choices"][0]["text"], int(body["usage"]["completion_tokens"]), seconds


def run(base: str, model: str, tokens: int, rounds: int) -> dict[str, Any]:
    texts, count, seconds, per = [], 0, 0.0, []
    for _ in range(rounds):
        for prompt in PROMPTS:
            text, n, s = complete(base, model, prompt, tokens)
            texts.append(text)
            count, seconds = count + n, seconds + s
            per.append(n / s)
    return {"tokens": count, "tokens_per_s": round(count / seconds, 1),
            "median_request_tokens_per_s": round(statistics.median(per), 1),
            "texts": texts[: len(PROMPTS)]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the prompts")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import ray
    from ray import serve

    from shoal.contract.lora import LORA_CREDENTIALS_DIR_ENV
    from shoal.devtools.testing.s3 import local_s3, upload_folder
    from shoal.local.ray_env import local_ray_env
    from shoal.serving.app import build_app
    from shoal.serving.tinyhf import (
        TinyHFModelSpec,
        TinyLoraSpec,
        ensure_tiny_hf_model,
        write_tiny_lora,
    )

    spec = TinyHFModelSpec(max_position_embeddings=256)
    model = ensure_tiny_hf_model(spec)
    tmp = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    adapter = write_tiny_lora(model, tmp / ADAPTER, TinyLoraSpec(name=ADAPTER), spec)
    port = free_port()
    with local_s3() as store:
        upload_folder(store, adapter, f"s3://adapters/tiny/{ADAPTER}")
        store.credentials_file(tmp / "credentials" / "tiny")
        os.environ[LORA_CREDENTIALS_DIR_ENV] = str(tmp / "credentials")
        with local_ray_env():
            ray.init(address="local", num_cpus=16, include_dashboard=False,
                     object_store_memory=128 * 1024 * 1024, log_to_driver=False,
                     logging_level="ERROR")  # fmt: skip
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            started = time.perf_counter()
            serve.run(build_app(fleet_args(model, store)), name="lora", route_prefix="/")
            deploy_s = time.perf_counter() - started
            base = f"http://127.0.0.1:{port}"
            complete(base, "tiny", PROMPTS[0], 8)  # warm-up of the base model
            _, _, first_adapter_s = complete(base, f"tiny:{ADAPTER}", PROMPTS[0], 8)
            results = {
                "base": run(base, "tiny", args.tokens, args.rounds),
                "adapter": run(base, f"tiny:{ADAPTER}", args.tokens, args.rounds),
                "adapter_routed": run(base, "auto", args.tokens, args.rounds),
            }
        finally:
            serve.shutdown()
            ray.shutdown()
    differ = sum(a != b for a, b in zip(results["base"]["texts"], results["adapter"]["texts"],
                                        strict=True))  # fmt: skip
    same_routed = results["adapter"]["texts"] == results["adapter_routed"]["texts"]
    print(f"deploy {deploy_s:.1f} s; the adapter's first request (download + load, 8 tokens) "
          f"{first_adapter_s:.2f} s")  # fmt: skip
    for label, r in results.items():
        print(f"{label:15} {r['tokens']:5} tokens  {r['tokens_per_s']:7.1f} tok/s "
              f"(median request {r['median_request_tokens_per_s']:.1f})")  # fmt: skip
    print(f"adapter's answers differ from the base model's on {differ}/{len(PROMPTS)} prompts; "
          f"routed answers are the named adapter's: {same_routed}")  # fmt: skip
    out = {
        "bench": "lora", "tokens_per_answer": args.tokens, "deploy_s": round(deploy_s, 1),
        "adapter_first_request_s": round(first_adapter_s, 2),
        **{f"{k}_tokens_per_s": r["tokens_per_s"] for k, r in results.items()},
        "adapter_differs_on": differ, "routed_is_adapter": same_routed,
    }  # fmt: skip
    print(json.dumps(out))
    if differ != len(PROMPTS) or not same_routed:
        sys.exit(1)


if __name__ == "__main__":
    main()
