"""The typed fields rendered into what each engine takes."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.api.v1alpha1 import ModelSpec
from shoal.contract import PVC_MOUNT_ROOT
from shoal.contract.variants import (
    engine_arguments,
    extra_sources,
    llamacpp_speculation,
    vllm_engine_kwargs,
)

BASE: dict[str, Any] = {"name": "m", "source": "hf://org/m", "tier": "t"}


def model(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({**BASE, **fields})


@pytest.mark.parametrize(
    ("accelerator", "method", "rendered"),
    [
        ("L4", "awq", "awq_marlin"),  # Ada: Marlin kernels
        ("T4", "awq", "awq"),  # Turing: no Marlin
        ("A100", "gptq", "gptq_marlin"),
        ("V100", "gptq", "gptq"),
        ("H100", "fp8", "fp8"),
        ("T4", "int8", "compressed-tensors"),
        ("L4", "bitsandbytes", "bitsandbytes"),
        (None, "awq", "awq"),  # CPU
    ],
)
def test_vllm_quantization(accelerator: str | None, method: str, rendered: str) -> None:
    fields: dict[str, Any] = {"quantization": {"method": method}}
    if accelerator:
        fields["accelerator"] = {"type": accelerator}
    assert vllm_engine_kwargs(model(**fields))["quantization"] == rendered


def test_vllm_engine_kwargs_keep_engine_args_and_add_the_typed_fields() -> None:
    kwargs = vllm_engine_kwargs(
        model(
            accelerator={"type": "H100", "count": 2},
            engineArgs={"max_model_len": 8192},
            quantization={"kvCacheDtype": "fp8"},
            speculative={"method": "ngram", "numSpeculativeTokens": 4,
                         "promptLookupMin": 2, "promptLookupMax": 4},
        )
    )  # fmt: skip
    assert kwargs == {
        "max_model_len": 8192,
        "tensor_parallel_size": 2,
        "kv_cache_dtype": "fp8",
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 4,
                               "prompt_lookup_min": 2, "prompt_lookup_max": 4},
    }  # fmt: skip
    assert "quantization" not in kwargs


@pytest.mark.parametrize(
    ("spec", "config"),
    [
        ({"method": "draft", "numSpeculativeTokens": 5, "draftSource": "hf://org/small"},
         {"method": "draft_model", "num_speculative_tokens": 5, "model": "org/small"}),
        ({"method": "eagle3", "numSpeculativeTokens": 3, "draftSource": "pvc://heads/e3"},
         {"method": "eagle3", "num_speculative_tokens": 3, "model": f"{PVC_MOUNT_ROOT}/heads/e3"}),
        ({"method": "eagle", "numSpeculativeTokens": 3, "draftSource": "file:///heads/e"},
         {"method": "eagle", "num_speculative_tokens": 3, "model": "/heads/e"}),
        ({"method": "mtp", "numSpeculativeTokens": 1},
         {"method": "mtp", "num_speculative_tokens": 1}),
    ],
)  # fmt: skip
def test_vllm_speculative_config(spec: dict[str, Any], config: dict[str, Any]) -> None:
    assert vllm_engine_kwargs(model(speculative=spec))["speculative_config"] == config


def test_llamacpp_speculation_is_engine_neutral() -> None:
    m = ModelSpec.model_validate(
        {**BASE, "engine": "llamacpp", "source": "file:///m.gguf",
         "quantization": {"method": "gguf", "ggufType": "Q4_K_M"},
         "speculative": {"method": "draft", "numSpeculativeTokens": 3,
                         "draftSource": "pvc://models/d.gguf"}}
    )  # fmt: skip
    spec = llamacpp_speculation(m)
    assert spec is not None and spec.draft_path == f"{PVC_MOUNT_ROOT}/models/d.gguf"
    assert spec.num_tokens == 3 and spec.method == "draft"
    assert engine_arguments(m)["gguf_type"] == "Q4_K_M"
    assert extra_sources(m) == ["pvc://models/d.gguf"]
