"""A model's quantisation and speculative decoding, rendered into what each engine takes.

The fleet's typed fields (:mod:`shoal.api.v1alpha1.variants`) become:

- for vLLM, keys of Ray Serve LLM's ``engine_kwargs`` (vLLM's ``AsyncEngineArgs``):
  ``quantization``, ``kv_cache_dtype`` and ``speculative_config``, and ``enable_lora`` /
  ``max_loras`` for a model with LoRA adapters
  (:func:`vllm_engine_kwargs`, used by :mod:`shoal.serving.engines.vllm` and shown by
  ``shoal render --engine-args``);
- for llama.cpp, engine-neutral settings (:class:`LlamaCppSpeculation`: n-gram lookup or a
  local draft GGUF, and how many tokens to guess), which the CPU engine maps onto its
  library (:mod:`shoal.serving.engines.llamacpp`).

Pure functions over the API models; no Ray or vLLM import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.api.v1alpha1 import ModelSpec
from shoal.api.v1alpha1.variants import SpeculativeDecoding, runs_marlin
from shoal.contract.lora import adapter_folder, adapter_route, lora_store_env
from shoal.contract.serve import PVC_MOUNT_ROOT

#: The API's quantisation methods as vLLM names them. INT8 W8A8 checkpoints are
#: llm-compressor's compressed-tensors format; AWQ and GPTQ switch to their Marlin kernels
#: where the accelerator has them (:func:`vllm_quantization`).
VLLM_QUANTIZATION: dict[str, str] = {
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "int8": "compressed-tensors",
    "bitsandbytes": "bitsandbytes",
    "compressed-tensors": "compressed-tensors",
}
#: The API's speculative methods as vLLM's ``speculative_config.method`` names them.
VLLM_SPECULATIVE_METHOD: dict[str, str] = {
    "ngram": "ngram",
    "draft": "draft_model",
    "eagle": "eagle",
    "eagle3": "eagle3",
    "mtp": "mtp",
}


def local_source_path(source: str | None) -> str | None:
    """Where a ``file://`` or ``pvc://`` source is in the Ray pods; None for remote ones."""
    if source is None:
        return None
    if source.startswith("file://"):
        return source[len("file://") :]
    if source.startswith("pvc://"):
        return f"{PVC_MOUNT_ROOT}/{source[len('pvc://') :]}"
    return None


def extra_sources(model: ModelSpec) -> list[str]:
    """Sources a model needs besides its weights: the draft model's (or EAGLE heads')."""
    if model.speculative is not None and model.speculative.draft_source is not None:
        return [model.speculative.draft_source]
    return []


def vllm_quantization(model: ModelSpec) -> str | None:
    """vLLM's ``quantization`` for the model, None when it sets none."""
    q = model.quantization
    if q is None or q.method is None or q.method == "gguf":
        return None
    name = VLLM_QUANTIZATION[q.method]
    accel = model.accelerator
    if q.method in ("awq", "gptq") and accel is not None and runs_marlin(accel.type):
        name = f"{name}_marlin"
    return name


def _vllm_draft(source: str) -> str:
    path = local_source_path(source)
    if path is not None:
        return path
    if source.startswith("hf://"):
        return source[len("hf://") :]
    raise ValueError(f"speculative.draftSource {source!r}: vLLM loads hf://, file:// or pvc://")


def vllm_speculative_config(spec: SpeculativeDecoding) -> dict[str, Any]:
    """vLLM's ``speculative_config`` for the model's speculative decoding."""
    out: dict[str, Any] = {
        "method": VLLM_SPECULATIVE_METHOD[spec.method],
        "num_speculative_tokens": spec.num_speculative_tokens,
    }
    if spec.draft_source is not None:
        out["model"] = _vllm_draft(spec.draft_source)
    if spec.prompt_lookup_min is not None:
        out["prompt_lookup_min"] = spec.prompt_lookup_min
    if spec.prompt_lookup_max is not None:
        out["prompt_lookup_max"] = spec.prompt_lookup_max
    return out


def vllm_engine_kwargs(model: ModelSpec) -> dict[str, Any]:
    """Ray Serve LLM's ``engine_kwargs`` of a vllm model: its engineArgs, its tensor
    parallelism (one shard per accelerator), and the typed fields rendered."""
    out = dict(model.engine_args)
    if model.accelerator is not None:
        out.setdefault("tensor_parallel_size", model.accelerator.count)
    if (quantization := vllm_quantization(model)) is not None:
        out["quantization"] = quantization
    if model.quantization is not None and model.quantization.kv_cache_dtype is not None:
        out["kv_cache_dtype"] = model.quantization.kv_cache_dtype
    if model.speculative is not None:
        out["speculative_config"] = vllm_speculative_config(model.speculative)
    if model.lora_adapters:
        # Ray Serve LLM downloads adapters but leaves vLLM's LoRA switch to the engine
        # arguments: on, with room for every adapter of the model in one batch.
        out.setdefault("enable_lora", True)
        out.setdefault("max_loras", len(model.lora_adapters))
    return out


@dataclass(frozen=True)
class LlamaCppSpeculation:
    """Speculative decoding for the CPU engine, whatever library runs llama.cpp."""

    #: ``ngram`` (prompt lookup) or ``draft`` (a second, smaller GGUF).
    method: str
    #: Tokens guessed per step.
    num_tokens: int
    #: Longest n-gram matched in the prompt (ngram).
    ngram_max: int | None = None
    #: Shortest n-gram matched in the prompt (ngram).
    ngram_min: int | None = None
    #: The draft GGUF's path in the pod (draft).
    draft_path: str | None = None


def llamacpp_speculation(model: ModelSpec) -> LlamaCppSpeculation | None:
    """The llama.cpp settings of a llamacpp model's speculative decoding, if any."""
    spec = model.speculative
    if spec is None:
        return None
    return LlamaCppSpeculation(
        method=spec.method,
        num_tokens=spec.num_speculative_tokens,
        ngram_max=spec.prompt_lookup_max,
        ngram_min=spec.prompt_lookup_min,
        draft_path=local_source_path(spec.draft_source),
    )


def engine_arguments(model: ModelSpec) -> dict[str, Any]:
    """What the model's engine is given, for review (``shoal render --engine-args``)."""
    if model.engine == "vllm":
        out_vllm: dict[str, Any] = {"engine_kwargs": vllm_engine_kwargs(model)}
        if model.lora_adapters:
            out_vllm["lora"] = {
                "dynamic_lora_loading_path": adapter_folder(model),
                "adapters": [adapter_route(model.name, a.name) for a in model.lora_adapters],
                "replica_env": lora_store_env(model),
            }
        return out_vllm
    out: dict[str, Any] = {"engine_args": dict(model.engine_args)}
    if model.engine == "llamacpp":
        speculation = llamacpp_speculation(model)
        if speculation is not None:
            out["speculative"] = {k: v for k, v in vars(speculation).items() if v is not None}
        if model.quantization is not None and model.quantization.gguf_type is not None:
            out["gguf_type"] = model.quantization.gguf_type
    return out
