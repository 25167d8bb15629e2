"""What each model can serve: the OpenAI parameters its engine honours, and its context.

The ingress passes the client's OpenAI request through to the engine. Before it does, it
checks the request against the model's :class:`Capabilities`, so that a parameter an engine
cannot honour is refused with a 400 that names it (and the model), never dropped without a
word, and so that ``model: "auto"`` ranks only the models that can serve the request in hand
(tools present: tool-capable models; prompt plus ``max_tokens`` within the context window).

Capabilities come from the engine and its ``engineArgs`` (llama.cpp's ``n_ctx`` and
``logits_all``, vLLM's ``max_model_len``), and a model's ``capabilities`` in the fleet spec
may narrow them (a model whose chat template has no tool support, say). Pure: no engine is
loaded to compute them. docs/serving.md has the same table for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shoal.api.v1alpha1 import ModelSpec

Kind = Literal["chat", "completion"]

#: What the ingress itself reads from every request (validated in openai_api).
READ_BY_INGRESS = frozenset(
    {
        "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stream",
        "stream_options", "n", "temperature", "top_p", "stop", "seed",
    }
)  # fmt: skip
#: OpenAI parameters that do not change the answer: accepted and not passed on.
NO_EFFECT = frozenset(
    {
        "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
        "parallel_tool_calls",
    }
)  # fmt: skip
#: Parameters OpenAI's API describes that some engine may honour (anything else is unknown and
#: refused with OpenAI's "Unrecognized request argument", unless the engine's own extras below
#: name it).
OPENAI_CHAT = frozenset(
    {
        "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
        "response_format", "tools", "tool_choice", "functions", "function_call", "audio",
        "modalities", "prediction", "reasoning_effort", "web_search_options", "verbosity",
    }
)  # fmt: skip
OPENAI_COMPLETION = frozenset(
    {"frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "echo", "suffix",
     "best_of"}
)  # fmt: skip
#: llama-cpp-python's own sampling parameters, passed through as its server takes them.
LLAMACPP_EXTRA = frozenset(
    {"top_k", "min_p", "typical_p", "repeat_penalty", "tfs_z", "mirostat_mode", "mirostat_tau",
     "mirostat_eta"}
)  # fmt: skip

#: vLLM's own sampling and structured-output parameters that are passed through. Only these:
#: vLLM takes more (``logits_processors`` names classes it imports, ``chat_template`` is a
#: Jinja template it renders, ``vllm_xargs``, ``kv_transfer_params``, ``priority``,
#: ``cache_salt`` and the like reach into the engine), none of which a client may set.
VLLM_EXTRA = frozenset(
    {"top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens", "ignore_eos",
     "stop_token_ids", "bad_words", "skip_special_tokens", "spaces_between_special_tokens",
     "include_stop_str_in_output", "guided_json", "guided_regex", "guided_choice",
     "guided_grammar", "structured_outputs", "continue_final_message", "add_generation_prompt"}
)  # fmt: skip

#: Context window assumed for a llama.cpp model whose engineArgs set no ``n_ctx``.
LLAMACPP_DEFAULT_CONTEXT = 2048


@dataclass(frozen=True)
class Capabilities:
    """What one model can serve."""

    engine: str
    #: Parameters passed through to the engine, besides what the ingress reads.
    chat_params: frozenset[str]
    completion_params: frozenset[str]
    tools: bool
    json_schema: bool
    logprobs: bool
    #: Tokens of prompt plus completion the model holds (None: unknown, not checked).
    context_window: int | None
    #: Whether parameters outside the known sets go to the engine (vLLM) or are refused.
    passes_unknown: bool = False

    def params(self, kind: Kind) -> frozenset[str]:
        return self.chat_params if kind == "chat" else self.completion_params


def capabilities(model: ModelSpec) -> Capabilities:
    """The capabilities of ``model``: its engine's, narrowed by ``spec.capabilities``."""
    args: dict[str, Any] = dict(model.engine_args or {})
    if model.engine == "llamacpp":
        # llama-cpp-python needs the logits of every token kept (engineArgs logits_all) for
        # logprobs; llama.cpp's own server (runtime xllamacpp) always has them.
        logprobs = bool(args.get("logits_all", False)) or args.get("runtime") == "xllamacpp"
        # Legacy functions/function_call are refused by name: llama.cpp answers in tool_calls,
        # not the legacy function_call their clients read.
        chat = OPENAI_CHAT - {"audio", "modalities", "prediction", "reasoning_effort",
                              "web_search_options", "verbosity", "functions",
                              "function_call"}  # fmt: skip
        no_logprobs = frozenset() if logprobs else frozenset({"logprobs", "top_logprobs"})
        caps = Capabilities(
            engine="llamacpp",
            chat_params=(chat | LLAMACPP_EXTRA) - no_logprobs,
            completion_params=(OPENAI_COMPLETION | LLAMACPP_EXTRA) - no_logprobs,
            tools=True,
            json_schema=True,
            logprobs=logprobs,
            context_window=int(args.get("n_ctx", LLAMACPP_DEFAULT_CONTEXT)),
        )
    elif model.engine == "vllm":
        window = args.get("max_model_len")
        caps = Capabilities(
            engine="vllm",
            chat_params=(OPENAI_CHAT - {"audio", "modalities", "prediction",
                                        "web_search_options"}) | VLLM_EXTRA,
            completion_params=OPENAI_COMPLETION | VLLM_EXTRA,
            tools=True,
            json_schema=True,
            logprobs=True,
            context_window=int(window) if window is not None else None,
        )  # fmt: skip
    elif model.engine == "openai":
        # Served outside the fleet: the spec's capabilities are the endpoint's own word
        # (tools and JSON schema unless declared false; logprobs only when declared true).
        declared_caps = model.capabilities
        logprobs = bool(declared_caps and declared_caps.logprobs)
        no_logprobs = frozenset() if logprobs else frozenset({"logprobs", "top_logprobs"})
        caps = Capabilities(
            engine="openai",
            chat_params=(OPENAI_CHAT - {"functions", "function_call"}) - no_logprobs,
            completion_params=OPENAI_COMPLETION - no_logprobs,
            tools=True,
            json_schema=True,
            logprobs=logprobs,
            context_window=None,
        )
    else:  # simulated: an honest subset (it generates placeholder text)
        caps = Capabilities(
            engine=model.engine,
            chat_params=frozenset(),
            completion_params=frozenset(),
            tools=False,
            json_schema=False,
            logprobs=False,
            context_window=None,
        )
    declared = model.capabilities
    if declared is None:
        return caps
    return _narrowed(caps, declared.tools, declared.json_schema, declared.context_window)


def _narrowed(
    caps: Capabilities, tools: bool | None, json_schema: bool | None, window: int | None
) -> Capabilities:
    drop: set[str] = set()
    windows = [w for w in (caps.context_window, window) if w is not None]
    if tools is False:
        drop |= {"tools", "tool_choice", "functions", "function_call"}
    if json_schema is False:
        drop |= {"response_format"}
    return Capabilities(
        engine=caps.engine,
        chat_params=caps.chat_params - drop,
        completion_params=caps.completion_params - drop,
        tools=caps.tools and tools is not False,
        json_schema=caps.json_schema and json_schema is not False,
        logprobs=caps.logprobs,
        context_window=min(windows) if windows else None,
        passes_unknown=caps.passes_unknown,
    )


@dataclass(frozen=True)
class Refusal:
    """Why a model cannot serve a request: OpenAI's ``param`` and ``code``, and a message."""

    param: str
    message: str
    code: str | None = None


def _is_default(name: str, value: Any) -> bool:
    """Values that ask for nothing (``logprobs: false``, ``tool_choice: "none"`` ...)."""
    if value is None or value is False:
        return True
    if name in ("frequency_penalty", "presence_penalty") and value == 0:
        return True
    if name == "response_format" and isinstance(value, dict) and value.get("type") == "text":
        return True
    if name in ("tool_choice", "function_call") and value == "none":
        return True
    if name == "best_of" and value == 1:
        return True
    if name in ("logit_bias", "tools", "functions") and not value:
        return True
    return name == "echo" and value is False


def refusal(
    caps: Capabilities, kind: Kind, body: dict[str, Any], prompt_tokens: int, max_tokens: int
) -> Refusal | None:
    """Why the model cannot serve ``body`` (None: it can). ``prompt_tokens`` is an estimate."""
    allowed = caps.params(kind)
    known = OPENAI_CHAT if kind == "chat" else OPENAI_COMPLETION
    no_calls = body.get("tool_choice", body.get("function_call")) == "none"
    for name, value in body.items():
        if name in READ_BY_INGRESS or name in NO_EFFECT or name in allowed:
            continue
        if _is_default(name, value) or (no_calls and name in ("tools", "functions")):
            continue  # asks for nothing (tools that may not be called ask for nothing either)
        if name not in known and not (name in LLAMACPP_EXTRA and caps.engine == "llamacpp"):
            if caps.passes_unknown:
                continue
            return Refusal(name, f"Unrecognized request argument supplied: {name}.")
        return Refusal(name, f"{name} is not supported by this model's engine ({caps.engine}).")
    if kind == "chat":
        for i, message in enumerate(body.get("messages") or []):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                for part in content:
                    kind_of = part.get("type") if isinstance(part, dict) else None
                    if kind_of not in ("text", None) and caps.engine != "vllm":
                        return Refusal(
                            f"messages[{i}].content",
                            f"Content parts of type {kind_of!r} are not supported by this "
                            f"model's engine ({caps.engine}); send text.",
                        )
    window = caps.context_window
    if window is not None and prompt_tokens + max_tokens > window:
        return Refusal(
            "messages" if kind == "chat" else "prompt",
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"about {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.",
            code="context_length_exceeded",
        )
    return None
