"""Quantisation, speculative decoding and engineArgs checks of a fleet's models, in Python
(the API server's side of the same rules is tests/integration/api/test_cel_rules.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shoal.api.v1alpha1 import ModelSpec
from shoal.api.v1alpha1.engine_args import TYPED_KEYS, unknown_engine_args
from shoal.api.v1alpha1.variants import architecture, runs_marlin, too_old_for
from shoal.api.v1alpha1.vllm_engine_args import ENGINE_ARGS

BASE: dict[str, Any] = {"name": "m", "source": "hf://org/m", "tier": "t"}
GGUF: dict[str, Any] = {**BASE, "engine": "llamacpp", "source": "file:///m.gguf"}


def model(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({**BASE, **fields})


def refused(spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        ModelSpec.model_validate(spec)
    return str(info.value)


@pytest.mark.parametrize(
    "spec",
    [
        {**BASE, "accelerator": {"type": "L4"}, "quantization": {"method": "awq"}},
        {**BASE, "accelerator": {"type": "T4"}, "quantization": {"method": "awq"}},
        {**BASE, "accelerator": {"type": "H100"}, "quantization": {"method": "fp8",
                                                                  "kvCacheDtype": "fp8"}},
        {**BASE, "accelerator": {"type": "V100"}, "quantization": {"method": "gptq"}},
        {**BASE, "accelerator": {"type": "MI300X"}, "quantization": {"method": "fp8"}},
        {**BASE, "quantization": {"method": "awq"}},  # vLLM's CPU build runs AWQ
        {**GGUF, "quantization": {"method": "gguf", "ggufType": "Q4_K_M"}},
        {**BASE, "speculative": {"method": "ngram", "numSpeculativeTokens": 4,
                                 "promptLookupMin": 2, "promptLookupMax": 4}},
        {**BASE, "speculative": {"method": "eagle3", "numSpeculativeTokens": 3,
                                 "draftSource": "hf://org/eagle3-head"}},
        {**BASE, "speculative": {"method": "mtp", "numSpeculativeTokens": 1}},
        {**GGUF, "speculative": {"method": "draft", "numSpeculativeTokens": 4,
                                 "draftSource": "pvc://models/draft.gguf"}},
        {**BASE, "engineArgs": {"max_model_len": 4096, "gpu_memory_utilization": 0.9}},
    ],
)  # fmt: skip
def test_valid_variants(spec: dict[str, Any]) -> None:
    ModelSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({**BASE, "quantization": {"method": "gguf"}}, "quantization.method gguf"),
        ({**GGUF, "quantization": {"method": "gptq"}}, "llamacpp model can only be gguf"),
        ({**GGUF, "quantization": {"method": "gguf", "kvCacheDtype": "fp8"}},
         "quantization.kvCacheDtype"),
        ({**BASE, "quantization": {"ggufType": "Q8_0"}}, "quantization.ggufType"),
        ({**BASE, "accelerator": {"type": "A100"}, "quantization": {"method": "fp8"}},
         "quantization.method fp8 needs an NVIDIA GPU of the Ada Lovelace generation"),
        ({**BASE, "accelerator": {"type": "V100"}, "quantization": {"method": "awq"}},
         "quantization.method awq needs"),
        ({**BASE, "accelerator": {"type": "V100"}, "quantization": {"method": "int8"}},
         "quantization.method int8 needs"),
        ({**BASE, "speculative": {"method": "draft", "numSpeculativeTokens": 4}},
         "speculative.draftSource is required"),
        ({**BASE, "speculative": {"method": "eagle", "numSpeculativeTokens": 4}},
         "speculative.draftSource is required"),
        ({**BASE, "speculative": {"method": "ngram", "numSpeculativeTokens": 4,
                                  "draftSource": "hf://org/d"}}, "not allowed with the ngram"),
        ({**BASE, "speculative": {"method": "mtp", "numSpeculativeTokens": 4,
                                  "draftSource": "hf://org/d"}}, "not allowed with the ngram"),
        ({**BASE, "speculative": {"method": "draft", "numSpeculativeTokens": 4,
                                  "draftSource": "hf://org/d", "promptLookupMax": 3}},
         "apply only to the ngram"),
        ({**BASE, "speculative": {"method": "ngram", "numSpeculativeTokens": 4,
                                  "promptLookupMin": 3, "promptLookupMax": 2}},
         "promptLookupMin must be less"),
        ({**BASE, "speculative": {"method": "ngram", "numSpeculativeTokens": 0}},
         "numSpeculativeTokens"),
        ({**GGUF, "speculative": {"method": "mtp", "numSpeculativeTokens": 1}},
         "only be ngram or draft"),
        ({**GGUF, "speculative": {"method": "draft", "numSpeculativeTokens": 2,
                                  "draftSource": "hf://org/d.gguf"}}, "must be a local GGUF"),
        ({**BASE, "speculative": {"method": "draft", "numSpeculativeTokens": 2,
                                  "draftSource": "gs://bucket/d"}}, "not from an object store"),
        ({**BASE, "engineArgs": {"max_model_length": 4096}},
         "engineArgs.max_model_length is not an engine argument of vLLM"),
        ({**BASE, "engineArgs": {"quantization": "awq"}}, "quantization.method"),
    ],
)  # fmt: skip
def test_invalid_variants_name_the_field(spec: dict[str, Any], needle: str) -> None:
    assert needle in refused(spec)


def test_unknown_engine_arg_is_named_with_a_suggestion() -> None:
    message = unknown_engine_args({"max_model_length": 1, "max_model_len": 2}) or ""
    assert "engineArgs.max_model_length" in message
    assert "did you mean max_model_len?" in message
    assert "engineArgs.max_model_len " not in message


def test_typed_keys_are_vllm_engine_args() -> None:
    # The keys the typed fields own are real vLLM arguments (so rendering them is valid).
    assert set(TYPED_KEYS) <= ENGINE_ARGS


def test_llamacpp_engine_args_are_not_judged_against_vllm() -> None:
    ModelSpec.model_validate({**GGUF, "engineArgs": {"n_ctx": 2048, "n_threads": 2}})


def test_hardware_table() -> None:
    assert architecture("H100") == "Hopper" and architecture("MI300X") is None
    assert "A100" in too_old_for("fp8") and "L4" not in too_old_for("fp8")
    assert "V100" in too_old_for("awq") and "T4" not in too_old_for("awq")
    assert "T4" not in too_old_for("int8") and "V100" in too_old_for("int8")
    assert runs_marlin("A10G") and not runs_marlin("T4") and not runs_marlin("unknown")


def test_round_trip_keeps_the_typed_fields() -> None:
    m = model(
        accelerator={"type": "L4"},
        quantization={"method": "awq", "kvCacheDtype": "fp8"},
        speculative={"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMax": 3},
    )
    out = m.to_k8s()
    assert out["quantization"] == {"method": "awq", "kvCacheDtype": "fp8"}
    assert out["speculative"]["numSpeculativeTokens"] == 4
    assert ModelSpec.model_validate(out) == m
