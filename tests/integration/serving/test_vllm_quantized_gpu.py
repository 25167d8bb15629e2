"""Quantised 7B variants on a GPU, through the fleet: FP8 and AWQ, and n-gram speculation.

What vLLM's CPU build cannot show: FP8 (quantised while loading a full-precision
checkpoint; Ada Lovelace or Hopper) and an AWQ checkpoint (Marlin kernels from Ampere),
each deployed from a fleet's typed ``quantization`` field exactly as the operator renders
it, and answering through the fleet's endpoint. Never required (not even with
``SHOAL_REQUIRE_SERVERS``): it needs an NVIDIA GPU, vLLM's GPU build and 7B weights the
machine already has (the hub is offline). Point ``SHOAL_VLLM_TEST_MODEL`` at a
full-precision instruct model (e.g. Qwen2.5-7B-Instruct: a local folder or a cached Hugging
Face id), ``SHOAL_VLLM_AWQ_MODEL`` at its AWQ checkpoint (Qwen2.5-7B-Instruct-AWQ), and
``SHOAL_VLLM_ACCELERATOR`` at the GPU's Ray type (default H100).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from vllm_fleet import VllmFleet, deploy, offline_hub

from shoal.contract import BuildArgs

MODEL = os.environ.get("SHOAL_VLLM_TEST_MODEL", "")
AWQ_MODEL = os.environ.get("SHOAL_VLLM_AWQ_MODEL", "")
ACCELERATOR = os.environ.get("SHOAL_VLLM_ACCELERATOR", "H100")

__all__ = ["offline_hub"]


def _gpu() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
    pytest.mark.skipif(not _gpu(), reason="no NVIDIA GPU visible to torch"),
    pytest.mark.skipif(
        not (MODEL and AWQ_MODEL),
        reason="SHOAL_VLLM_TEST_MODEL and SHOAL_VLLM_AWQ_MODEL name no local 7B models",
    ),
]


def _source(model: str) -> str:
    return f"file://{model}" if model.startswith("/") else f"hf://{model}"


@pytest.fixture(scope="module")
def fleet(offline_hub: None, local_ray: Any) -> Iterator[VllmFleet]:
    common = {
        "engine": "vllm", "tier": "gpu", "accelerator": {"type": ACCELERATOR},
        "minReplicas": 1, "maxReplicas": 1,
        "engineArgs": {"max_model_len": 2048, "gpu_memory_utilization": 0.28},
    }  # fmt: skip
    args = BuildArgs.parse(
        {
            "fleet_name": "quantized-gpu",
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "gpu", "costPerReplicaHour": "1.00"}],
                "models": [
                    {**common, "name": "fp8", "source": _source(MODEL),
                     "quantization": {"method": "fp8", "kvCacheDtype": "fp8"}},
                    {**common, "name": "awq", "source": _source(AWQ_MODEL),
                     "quantization": {"method": "awq"}},
                    {**common, "name": "full-ngram", "source": _source(MODEL),
                     "speculative": {"method": "ngram", "numSpeculativeTokens": 4,
                                     "promptLookupMax": 4}},
                ],
            },
            "policy": {"strategy": "static", "staticOrder": ["awq", "fp8", "full-ngram"]},
        }
    )  # fmt: skip
    yield from deploy(local_ray, args, MODEL)


@pytest.mark.parametrize("model", ["fp8", "awq", "full-ngram"])
def test_quantised_variant_answers_through_the_fleet(fleet: VllmFleet, model: str) -> None:
    res = httpx.post(
        f"{fleet.base_url}/v1/chat/completions",
        json={"model": model, "max_tokens": 32, "temperature": 0,
              "messages": [{"role": "user", "content": "What is 6 times 7? Answer in digits."}]},
        timeout=300,
    )  # fmt: skip
    assert res.status_code == 200, res.text
    assert res.headers["x-shoal-model"] == model
    assert "42" in res.json()["choices"][0]["message"]["content"]
