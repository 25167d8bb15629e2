"""Speculative decoding and the GGUF type check for the llama.cpp engine.

The contract's :class:`~shoal.contract.variants.LlamaCppSpeculation` (a fleet model's
``speculative``) becomes llama-cpp-python's ``draft_model``:

- ``ngram``: its own prompt lookup (``LlamaPromptLookupDecoding``: the longest n-gram of the
  context, up to ``ngram_max``, that occurred before proposes what followed it);
- ``draft``: :class:`GgufDraftModel`, a second, smaller GGUF run greedily for
  ``num_tokens`` tokens, reusing its KV cache for the shared prefix.

llama-cpp-python verifies every guess against the model's own logits and keeps only the
tokens the model would have sampled, so the output is the model's alone in exact arithmetic
(a batch of guesses can round differently from one token at a time: see docs/serving.md).

:func:`gguf_file_type` reads a GGUF's quantisation type from its header (the ``gguf``
package), for :func:`check_gguf_type` against the fleet's ``quantization.ggufType``.
Called by :class:`~shoal.serving.engines.llamacpp.LlamaCppEngine` when it loads.
"""

from __future__ import annotations

import os
from typing import Any

from shoal.contract.variants import LlamaCppSpeculation
from shoal.serving.engines.base import EngineError

#: llama-cpp-python's prompt lookup matches n-grams up to this length when none is given.
DEFAULT_NGRAM_MAX = 2


def gguf_file_type(path: str) -> str | None:
    """The GGUF's quantisation type as llama.cpp names it (Q4_K_M, Q8_0, F16, F32), from
    ``general.file_type`` in its header; None when the header has none."""
    import gguf

    reader = gguf.GGUFReader(path)
    field = reader.fields.get("general.file_type")
    if field is None:
        return None
    value = int(field.parts[field.data[0]][0])
    try:
        name = str(gguf.LlamaFileType(value).name)
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def check_gguf_type(model: str, path: str, declared: str | None) -> None:
    """Refuse to load a GGUF whose header says another type than the fleet declares."""
    if declared is None:
        return
    actual = gguf_file_type(path)
    if actual is not None and actual != declared:
        raise EngineError(
            f"model {model}: quantization.ggufType is {declared} but {path} is {actual}"
        )


class GgufDraftModel:
    """A draft GGUF behind llama-cpp-python's ``LlamaDraftModel`` call: given the context's
    tokens, the draft's ``num_tokens`` greedy next tokens."""

    def __init__(self, path: str, num_tokens: int, n_ctx: int, n_threads: int | None) -> None:
        import llama_cpp

        if not os.path.exists(path):
            raise EngineError(f"no draft GGUF at {path}")
        kwargs: dict[str, Any] = {"n_ctx": n_ctx, "verbose": False}
        if n_threads:
            kwargs["n_threads"] = n_threads
        self.llm = llama_cpp.Llama(model_path=path, **kwargs)
        self.num_tokens = num_tokens

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        import numpy as np

        room = self.llm.n_ctx() - len(input_ids) - 1
        out: list[int] = []
        if room > 0:
            # generate() reuses the KV cache of the longest prefix it already evaluated.
            for token in self.llm.generate(
                [int(t) for t in input_ids], top_k=1, temp=0.0, reset=True
            ):
                out.append(int(token))
                if len(out) >= min(self.num_tokens, room):
                    break
        return np.array(out, dtype=np.intc)


def draft_model(spec: LlamaCppSpeculation, n_ctx: int, n_threads: int | None) -> Any:
    """llama-cpp-python's ``draft_model`` for ``spec``."""
    from llama_cpp.llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding

    if spec.method == "ngram":
        return LlamaPromptLookupDecoding(
            max_ngram_size=spec.ngram_max or DEFAULT_NGRAM_MAX, num_pred_tokens=spec.num_tokens
        )
    if spec.method == "draft" and spec.draft_path is not None:
        draft = GgufDraftModel(spec.draft_path, spec.num_tokens, n_ctx, n_threads)
        LlamaDraftModel.register(GgufDraftModel)
        return draft
    raise EngineError(f"speculative method {spec.method} is not served by llama.cpp")
