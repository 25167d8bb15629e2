"""vLLM's speculative decoding, for real on CPU, through the fleet.

One fleet, as the operator renders it (``shoal.serving.app.build_app``), with two vLLM
models on the project's tiny Hugging Face Llama under vLLM's CPU build: ``tiny`` plain, and
``tiny-ngram``, the same weights with ``speculative: {method: ngram}`` rendered into vLLM's
``speculative_config``. At temperature 0 ``tiny-ngram`` answers exactly the tokens ``tiny``
answers, through the fleet's endpoint.

LoRA: the project's generated adapter through the fleet, from a local S3 store, is
``test_vllm_lora.py``.

Tokens per second with and without speculation: ``bench/bench_speculative.py`` (a tiny
model's figures say nothing about 7B models on GPUs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_fleet import TINY_MAX_MODEL_LEN, VllmFleet, deploy, offline_hub, require_vllm

from shoal.contract import BuildArgs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["offline_hub"]  # a fixture this module uses

#: Prompts that repeat themselves, so n-gram lookup has something to propose.
PROMPTS = [
    "one two three four one two three four one two three",
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
]


@pytest.fixture(scope="module")
def fleet(
    offline_hub: None, local_ray: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmFleet]:
    require_vllm()
    from shoal.serving.tinyhf import TinyHFModelSpec, ensure_tiny_hf_model

    model = ensure_tiny_hf_model(TinyHFModelSpec(max_position_embeddings=TINY_MAX_MODEL_LEN))
    common = {
        "engine": "vllm", "source": f"file://{model}", "tier": "cpu",
        "resources": {"cpu": "1"}, "minReplicas": 1, "maxReplicas": 1,
        "engineArgs": {"dtype": "float32", "max_model_len": TINY_MAX_MODEL_LEN,
                       "enforce_eager": True},
    }  # fmt: skip
    args = BuildArgs.parse(
        {
            "fleet_name": "variants",
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "cpu", "costPerReplicaHour": "0.50"}],
                "models": [
                    {**common, "name": "tiny"},
                    {**common, "name": "tiny-ngram",
                     "speculative": {"method": "ngram", "numSpeculativeTokens": 3,
                                     "promptLookupMin": 1, "promptLookupMax": 3}},
                ],
            },
            "policy": {"strategy": "static", "staticOrder": ["tiny", "tiny-ngram"]},
            "limits": {"max_tokens": 128, "first_token_timeout_seconds": 60},
        }
    )  # fmt: skip
    yield from deploy(local_ray, args, str(model))


def complete(fleet: VllmFleet, model: str, prompt: str, max_tokens: int = 48) -> httpx.Response:
    return httpx.post(
        f"{fleet.base_url}/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
              "ignore_eos": True},
        timeout=120,
    )  # fmt: skip


def test_ngram_speculation_gives_the_same_tokens(fleet: VllmFleet) -> None:
    for prompt in PROMPTS:
        plain, spec = complete(fleet, "tiny", prompt), complete(fleet, "tiny-ngram", prompt)
        assert plain.status_code == 200 and spec.status_code == 200, spec.text
        assert spec.headers["x-shoal-model"] == "tiny-ngram"
        ours, theirs = plain.json(), spec.json()
        assert theirs["usage"]["completion_tokens"] == ours["usage"]["completion_tokens"] == 48
        assert theirs["choices"][0]["text"] == ours["choices"][0]["text"]


def test_unknown_adapter_is_a_client_error(fleet: VllmFleet) -> None:
    res = complete(fleet, "tiny:no-such-adapter", PROMPTS[0])
    assert res.status_code == 404, res.text
    assert res.json()["error"]["param"] == "model"


def test_generated_adapter_is_peft_shaped(tmp_path: Path) -> None:
    import json

    from shoal.serving.tinyhf import TinyHFModelSpec, TinyLoraSpec, write_tiny_lora

    out = write_tiny_lora("/base", tmp_path / "a", TinyLoraSpec(name="a", rank=4),
                          TinyHFModelSpec(layers=1))  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert (out / "adapter_model.safetensors").stat().st_size > 4 * 128 * 4 * 2
