"""The vLLM tests of ``test_vllm_cpu.py`` with a real model on a GPU, where one is.

The same tests and the same fleet (one vLLM model, two llama.cpp models, one simulated
model), with only the vLLM model's device settings and weights changed: a real model on an
NVIDIA GPU instead of the tiny generated one on CPUs. Never required (not even with
``SHOAL_REQUIRE_SERVERS``): it needs a GPU, vLLM's GPU build and weights the machine already
has. Point ``SHOAL_VLLM_TEST_MODEL`` at a small instruct model (a local folder, or a Hugging
Face id in the local cache; nothing is downloaded: the hub is offline) and
``SHOAL_VLLM_ACCELERATOR`` at its GPU type (default H100).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest
from test_vllm_cpu import (
    kill_vllm_under_load,
    test_an_unstreamed_answer_carries_the_fleets_signed_id,
    test_an_unstreamed_request_reaches_vllm_unstreamed,
    test_chat_streamed_by_name_matches_unstreamed,
    test_chat_through_auto_is_answered_by_vllm,
    test_completions_both_ways,
    test_json_schema_output_through_the_fleet,
    test_llm_server_json_schema_output,
    test_llm_server_logprobs,
    test_logprobs_through_the_fleet,
)
from vllm_fleet import VllmFleet, deploy, fleet_args, offline_hub

MODEL = os.environ.get("SHOAL_VLLM_TEST_MODEL", "")

__all__ = [
    "offline_hub",
    "test_an_unstreamed_answer_carries_the_fleets_signed_id",
    "test_an_unstreamed_request_reaches_vllm_unstreamed",
    "test_chat_streamed_by_name_matches_unstreamed",
    "test_chat_through_auto_is_answered_by_vllm",
    "test_completions_both_ways",
    "test_json_schema_output_through_the_fleet",
    "test_llm_server_json_schema_output",
    "test_llm_server_logprobs",
    "test_logprobs_through_the_fleet",
]


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
def fleet(
    offline_hub: None, local_ray: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmFleet]:
    source = f"file://{MODEL}" if MODEL.startswith("/") else f"hf://{MODEL}"
    vllm_model = {
        "engine": "vllm",
        "source": source,
        "accelerator": {"type": os.environ.get("SHOAL_VLLM_ACCELERATOR", "H100")},
        "engineArgs": {"max_model_len": 2048, "gpu_memory_utilization": 0.5},
    }
    args = fleet_args(vllm_model, tmp_path_factory.mktemp("vllm-gpu-fleet"), None)
    yield from deploy(local_ray, args, MODEL)


def test_killing_the_vllm_replica_under_load_loses_no_request(fleet: VllmFleet) -> None:
    # Last (it is defined after the imported tests): the replacement replica takes minutes.
    kill_vllm_under_load(fleet)
