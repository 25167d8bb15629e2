"""A vLLM model in the fleet, for real: only where an NVIDIA GPU, vLLM and model weights are.

Never required (not even with ``SHOAL_REQUIRE_SERVERS``): elsewhere the vLLM path is checked
through its configuration (``tests/unit/serving/test_app_build.py``). Point
``SHOAL_VLLM_TEST_MODEL`` at a small model the machine already has (a local folder, or a
Hugging Face id in the local cache); nothing is downloaded by the test.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.contract import BuildArgs

MODEL = os.environ.get("SHOAL_VLLM_TEST_MODEL", "")


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
    pytest.mark.skipif(not MODEL, reason="SHOAL_VLLM_TEST_MODEL names no local model"),
]


@pytest.fixture(scope="module")
def fleet(local_ray: Any) -> Iterator[Any]:
    from ray import serve

    from shoal.serving.app import build_app

    source = f"file://{MODEL}" if MODEL.startswith("/") else f"hf://{MODEL}"
    args = BuildArgs.parse(
        {
            "fleet_name": "gpu",
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "gpu", "costPerReplicaHour": "1.00"}],
                "models": [
                    {"name": "real", "engine": "vllm", "tier": "gpu", "source": source,
                     "accelerator": {"type": os.environ.get("SHOAL_VLLM_ACCELERATOR", "H100")},
                     "engineArgs": {"max_model_len": 2048, "gpu_memory_utilization": 0.5}},
                    {"name": "sim", "engine": "simulated", "tier": "gpu"},
                ],
            },
            "policy": {"strategy": "static", "staticOrder": ["real", "sim"]},
        }
    )  # fmt: skip
    serve.run(build_app(args), name="gpu", route_prefix="/")
    yield local_ray
    serve.delete("gpu")


def test_vllm_answers_through_the_fleet(fleet: Any) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{fleet.base_url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
    )
    assert raw.headers["x-shoal-model"] == "real"
    chat = raw.parse()
    assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="real", messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=32, stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    done = client.completions.create(model="real", prompt="The capital of France is", max_tokens=4)
    assert done.choices[0].text
