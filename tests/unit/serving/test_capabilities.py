"""What each model can serve decides where a request may go, and what a 400 names."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.api.v1alpha1 import ModelSpec
from shoal.serving.capabilities import LLAMACPP_DEFAULT_CONTEXT, capabilities, refusal


def _model(engine: str, **extra: Any) -> ModelSpec:
    source = {} if engine == "simulated" else {"source": "file:///m.gguf"}
    return ModelSpec.model_validate({"name": "m", "tier": "t", "engine": engine, **source, **extra})


def _why(model: ModelSpec, body: dict[str, Any], prompt: int = 10, budget: int = 16) -> Any:
    kind = "chat" if "messages" in body else "completion"
    return refusal(capabilities(model), kind, {"model": "m", **body}, prompt, budget)


CHAT = {"messages": [{"role": "user", "content": "hi"}]}
TOOLS = [{"type": "function", "function": {"name": "f"}}]


def test_llamacpp_context_and_logprobs_come_from_engine_args() -> None:
    plain = capabilities(_model("llamacpp"))
    assert plain.context_window == LLAMACPP_DEFAULT_CONTEXT and not plain.logprobs
    kept = capabilities(_model("llamacpp", engineArgs={"n_ctx": 512, "logits_all": True}))
    assert kept.context_window == 512 and kept.logprobs


def test_vllm_context_from_max_model_len() -> None:
    caps = capabilities(_model("vllm", engineArgs={"max_model_len": 4096}))
    assert caps.context_window == 4096 and caps.tools and not caps.passes_unknown


@pytest.mark.parametrize(
    ("engine", "extra", "body", "param"),
    [
        ("llamacpp", {}, {**CHAT, "tools": TOOLS}, None),
        ("llamacpp", {}, {**CHAT, "logprobs": True}, "logprobs"),
        ("llamacpp", {"engineArgs": {"logits_all": True}}, {**CHAT, "logprobs": True}, None),
        ("llamacpp", {}, {**CHAT, "logprobs": False}, None),  # asks for nothing
        ("llamacpp", {}, {**CHAT, "audio": {"voice": "alloy"}}, "audio"),
        ("llamacpp", {}, {**CHAT, "guided_json": {}}, "guided_json"),  # unknown: refused
        ("vllm", {}, {**CHAT, "guided_json": {}}, None),  # vLLM's own extras
        ("vllm", {}, {**CHAT, "top_k": 5, "min_p": 0.1}, None),
        # vLLM takes these too, but they reach into the engine: unknown to the ingress.
        ("vllm", {}, {**CHAT, "logits_processors": ["os.system"]}, "logits_processors"),
        ("vllm", {}, {**CHAT, "chat_template": "{{ 7 * 7 }}"}, "chat_template"),
        ("vllm", {}, {"prompt": "x", "vllm_xargs": {"a": 1}}, "vllm_xargs"),
        ("simulated", {}, {**CHAT, "tools": TOOLS}, "tools"),
        ("simulated", {}, {**CHAT, "tool_choice": "none", "tools": []}, None),
        ("simulated", {}, {**CHAT, "response_format": {"type": "text"}}, None),
        ("simulated", {}, {**CHAT, "response_format": {"type": "json_object"}},
         "response_format"),
        ("simulated", {}, {**CHAT, "user": "team-a", "metadata": {"k": "v"}}, None),
        ("llamacpp", {"capabilities": {"tools": False}}, {**CHAT, "tools": TOOLS}, "tools"),
        ("llamacpp", {}, {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "messages[0].content"),
        ("llamacpp", {}, {"prompt": "x", "echo": True, "suffix": "y"}, None),
        ("simulated", {}, {"prompt": "x", "echo": True}, "echo"),
    ],
)  # fmt: skip
def test_refusals_name_the_parameter(
    engine: str, extra: dict[str, Any], body: dict[str, Any], param: str | None
) -> None:
    why = _why(_model(engine, **extra), body)
    assert (why.param if why else None) == param
    if why is not None:
        assert engine in why.message or "Unrecognized" in why.message or "parts" in why.message


def test_context_window_counts_prompt_and_completion() -> None:
    model = _model("llamacpp", engineArgs={"n_ctx": 256})
    assert _why(model, CHAT, prompt=200, budget=56) is None
    why = _why(model, CHAT, prompt=200, budget=57)
    assert why is not None and why.code == "context_length_exceeded" and "256" in why.message


def test_declared_context_narrows_the_engine_s() -> None:
    caps = capabilities(
        _model("llamacpp", engineArgs={"n_ctx": 4096}, capabilities={"contextWindow": 1024})
    )
    assert caps.context_window == 1024
    sim = capabilities(_model("simulated", capabilities={"contextWindow": 1024}))
    assert sim.context_window == 1024
