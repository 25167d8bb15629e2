"""How a model is served smaller and faster: quantisation and speculative decoding.

Two optional fields of a fleet's model (:class:`~shoal.api.v1alpha1.fleet.ModelSpec`):

- ``quantization`` (:class:`Quantization`): the weights' quantisation method as vLLM names it
  (awq, gptq, fp8, int8 W8A8, bitsandbytes, compressed-tensors) or ``gguf`` for llama.cpp
  (with the GGUF's own type, e.g. Q4_K_M, checked against the file where it is local), and
  vLLM's KV-cache dtype.
- ``speculative`` (:class:`SpeculativeDecoding`): n-gram prompt lookup, a draft model, EAGLE /
  EAGLE-3 heads or the model's own MTP heads, and how many tokens to speculate.

The rules that involve the engine or the accelerator are :data:`MODEL_RULES`, which
:class:`~shoal.api.v1alpha1.fleet.ModelSpec` adds to its own, so this module stays
self-contained. Whether a quantisation method runs on an accelerator comes from
:data:`MIN_ARCHITECTURE` and :data:`ARCHITECTURES` (vLLM's supported-hardware table); each rule
is written once and enforced twice (CEL in the CRD, Python in Pydantic) like every other
:class:`~shoal.api.v1alpha1.common.Rule`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints

from shoal.api.v1alpha1.common import ApiModel, Rule, SourceUri

QuantizationMethod = Literal[
    "awq", "gptq", "fp8", "int8", "bitsandbytes", "compressed-tensors", "gguf"
]
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
SpeculativeMethod = Literal["ngram", "draft", "eagle", "eagle3", "mtp"]

#: NVIDIA GPU generations, oldest first, with the Ray accelerator types of each (Ray's names,
#: ``ray.util.accelerators``). Types not listed (AMD, TPU, Gaudi, unknown) are not judged.
ARCHITECTURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Pascal", ("P4", "P100")),
    ("Volta", ("V100",)),
    ("Turing", ("T4",)),
    ("Ampere", ("A10", "A10G", "A30", "A40", "A100", "A100-40G", "A100-80G", "RTX-A6000")),
    ("Ada Lovelace", ("L4", "L40", "L40S", "RTX-4090")),
    ("Hopper", ("H100", "H200", "H20", "GH200")),
    ("Blackwell", ("B200", "B300", "GB200")),
)

#: The oldest NVIDIA generation each quantisation method runs on, from vLLM's
#: supported-hardware table (docs.vllm.ai, features/quantization/supported_hardware): AWQ not
#: on Volta, INT8 W8A8 from Turing, FP8 W8A8 on Ada Lovelace and Hopper (vLLM runs FP8
#: checkpoints on Ampere only as weight-only W8A16 through Marlin, which the table does not
#: count). GPTQ, bitsandbytes and compressed-tensors run from Volta; Pascal is in none.
MIN_ARCHITECTURE: dict[str, str] = {
    "awq": "Turing",
    "gptq": "Volta",
    "int8": "Turing",
    "fp8": "Ada Lovelace",
    "bitsandbytes": "Volta",
    "compressed-tensors": "Volta",
}

#: Generations with vLLM's Marlin kernels (Ampere and newer): AWQ and GPTQ render as
#: awq_marlin / gptq_marlin there, the faster kernels vLLM would pick itself.
MARLIN_FROM = "Ampere"


def architecture(accelerator_type: str) -> str | None:
    """The NVIDIA generation of a Ray accelerator type, None where the table does not know it."""
    for name, types in ARCHITECTURES:
        if accelerator_type in types:
            return name
    return None


def _generation(name: str) -> int:
    return [n for n, _ in ARCHITECTURES].index(name)


def too_old_for(method: str) -> list[str]:
    """Ray accelerator types of generations older than ``method`` needs."""
    floor = _generation(MIN_ARCHITECTURE[method])
    return [t for i, (_, types) in enumerate(ARCHITECTURES) if i < floor for t in types]


def runs_marlin(accelerator_type: str) -> bool:
    """Whether vLLM's Marlin kernels run on this accelerator type."""
    arch = architecture(accelerator_type)
    return arch is not None and _generation(arch) >= _generation(MARLIN_FROM)


GgufType = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[A-Z0-9_]+$")]


class Quantization(ApiModel):
    """How the model's weights (and vLLM's KV cache) are quantised."""

    method: QuantizationMethod | None = Field(
        default=None,
        description="Quantisation of the weights: awq, gptq, fp8, int8 (W8A8), bitsandbytes or "
        "compressed-tensors for vllm (the checkpoint's own, or fp8/bitsandbytes quantised "
        "when loading); gguf for llamacpp. Unset: full precision (or what the checkpoint says).",
    )
    gguf_type: GgufType | None = Field(
        default=None,
        description="The GGUF file's quantisation type as llama.cpp names it, e.g. Q4_K_M, "
        "Q8_0, F16 (method gguf only); checked against the file's header where the file is "
        "local.",
    )
    kv_cache_dtype: KvCacheDtype | None = Field(
        default=None,
        description="Data type of vLLM's KV cache: auto (the model's) or fp8 / fp8_e4m3 / "
        "fp8_e5m2 (half the KV memory; vllm only).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.ggufType) || (has(self.method) && self.method == 'gguf')",
            message="quantization.ggufType needs quantization.method gguf",
            check=lambda q: q.gguf_type is None or q.method == "gguf",
            field_path=".ggufType",
        ),
    )


class SpeculativeDecoding(ApiModel):
    """Speculative decoding: cheap guesses of the next tokens, verified by the model in one
    step, so the output is exactly what the model alone would give."""

    method: SpeculativeMethod = Field(
        description="ngram: guesses from n-grams of the prompt (no extra weights); draft: a "
        "smaller model of the same tokenizer; eagle / eagle3: EAGLE draft heads; mtp: the "
        "model's own multi-token-prediction heads (vllm only for eagle, eagle3 and mtp)."
    )
    num_speculative_tokens: int = Field(
        ge=1, le=16, description="Tokens guessed per step and verified by the model."
    )
    draft_source: SourceUri | None = Field(
        default=None,
        description="Weights of the draft model or EAGLE heads (draft, eagle, eagle3): "
        "hf://, file:// or pvc:// (vllm), a local GGUF file:// or pvc:// (llamacpp).",
    )
    prompt_lookup_min: int | None = Field(
        default=None, ge=1, le=16, description="Shortest n-gram matched in the prompt (ngram)."
    )
    prompt_lookup_max: int | None = Field(
        default=None, ge=1, le=16, description="Longest n-gram matched in the prompt (ngram)."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!(self.method in ['draft', 'eagle', 'eagle3']) || has(self.draftSource)",
            message="speculative.draftSource is required by the draft, eagle and eagle3 methods",
            check=lambda s: (
                s.method not in ("draft", "eagle", "eagle3") or s.draft_source is not None
            ),
            field_path=".draftSource",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="!(self.method in ['ngram', 'mtp']) || !has(self.draftSource)",
            message="speculative.draftSource is not allowed with the ngram and mtp methods (they "
            "draft from the prompt or the model's own heads)",
            check=lambda s: s.method not in ("ngram", "mtp") or s.draft_source is None,
            field_path=".draftSource",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="self.method == 'ngram' || (!has(self.promptLookupMin) && "
            "!has(self.promptLookupMax))",
            message="speculative.promptLookupMin and promptLookupMax apply only to the ngram "
            "method",
            check=lambda s: (
                s.method == "ngram" or (s.prompt_lookup_min is None and s.prompt_lookup_max is None)
            ),
            field_path=".method",
        ),
        Rule(
            cel="!has(self.promptLookupMin) || !has(self.promptLookupMax) || "
            "self.promptLookupMin <= self.promptLookupMax",
            message="speculative.promptLookupMin must be less than or equal to promptLookupMax",
            check=lambda s: (
                s.prompt_lookup_min is None
                or s.prompt_lookup_max is None
                or s.prompt_lookup_min <= s.prompt_lookup_max
            ),
            field_path=".promptLookupMin",
        ),
    )


def _method(m: Any) -> str | None:
    return m.quantization.method if m.quantization is not None else None


def _hardware_rule(method: str) -> Rule:
    old = too_old_for(method)
    listed = ", ".join(f"'{t}'" for t in old)
    return Rule(
        cel=f"!has(self.quantization) || !has(self.quantization.method) || "
        f"self.quantization.method != '{method}' || !has(self.accelerator) || "
        f"!(self.accelerator.type in [{listed}])",
        message=f"quantization.method {method} needs an NVIDIA GPU of the "
        f"{MIN_ARCHITECTURE[method]} generation or newer (vLLM's supported-hardware table), "
        f"not accelerator.type {', '.join(old)}",
        check=lambda m: (
            _method(m) != method or m.accelerator is None or m.accelerator.type not in old
        ),
        field_path=".quantization.method",
    )


def _local(source: str | None) -> bool:
    return source is not None and source.startswith(("file://", "pvc://"))


#: Rules of a model that involve its engine or accelerator (added to ModelSpec's own).
MODEL_RULES: tuple[Rule, ...] = (
    Rule(
        cel="self.engine != 'vllm' || !has(self.quantization) || "
        "!has(self.quantization.method) || self.quantization.method != 'gguf'",
        message="quantization.method gguf is served by the llamacpp engine, not vllm (vLLM's "
        "GGUF support left its core)",
        check=lambda m: m.engine != "vllm" or _method(m) != "gguf",
        field_path=".quantization.method",
    ),
    Rule(
        cel="self.engine != 'llamacpp' || !has(self.quantization) || "
        "!has(self.quantization.method) || self.quantization.method == 'gguf'",
        message="quantization.method of a llamacpp model can only be gguf",
        check=lambda m: m.engine != "llamacpp" or _method(m) in (None, "gguf"),
        field_path=".quantization.method",
    ),
    Rule(
        cel="self.engine == 'vllm' || !has(self.quantization) || "
        "!has(self.quantization.kvCacheDtype)",
        message="quantization.kvCacheDtype is supported only by the vllm engine",
        check=lambda m: (
            m.engine == "vllm" or m.quantization is None or m.quantization.kv_cache_dtype is None
        ),
        field_path=".quantization.kvCacheDtype",
        reason="FieldValueForbidden",
    ),
    *(_hardware_rule(method) for method in ("awq", "int8", "fp8")),
    Rule(
        cel="self.engine != 'llamacpp' || !has(self.speculative) || "
        "self.speculative.method in ['ngram', 'draft']",
        message="speculative.method of a llamacpp model can only be ngram or draft",
        check=lambda m: (
            m.engine != "llamacpp"
            or m.speculative is None
            or m.speculative.method in ("ngram", "draft")
        ),
        field_path=".speculative.method",
    ),
    Rule(
        cel="self.engine != 'llamacpp' || !has(self.speculative) || "
        "!has(self.speculative.draftSource) || "
        "self.speculative.draftSource.startsWith('file://') || "
        "self.speculative.draftSource.startsWith('pvc://')",
        message="speculative.draftSource of a llamacpp model must be a local GGUF "
        "(file:// or pvc://)",
        check=lambda m: (
            m.engine != "llamacpp"
            or m.speculative is None
            or m.speculative.draft_source is None
            or _local(m.speculative.draft_source)
        ),
        field_path=".speculative.draftSource",
    ),
    Rule(
        cel="self.engine != 'vllm' || !has(self.speculative) || "
        "!has(self.speculative.draftSource) || "
        "!(self.speculative.draftSource.startsWith('s3://') || "
        "self.speculative.draftSource.startsWith('gs://'))",
        message="speculative.draftSource of a vllm model must be hf://, file:// or pvc:// "
        "(vLLM loads the draft itself, not from an object store)",
        check=lambda m: (
            m.engine != "vllm"
            or m.speculative is None
            or m.speculative.draft_source is None
            or not m.speculative.draft_source.startswith(("s3://", "gs://"))
        ),
        field_path=".speculative.draftSource",
    ),
)
