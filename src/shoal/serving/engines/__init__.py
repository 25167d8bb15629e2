"""Engines behind one protocol (:class:`~shoal.serving.engines.base.Engine`).

- ``simulated``: :class:`~shoal.serving.engines.simulated.SimulatedEngine`, a load-faithful
  simulator (vLLM's metric names, continuous batching, queueing);
- ``llamacpp``: llama.cpp on CPU, through one of two runtimes (``engineArgs.runtime``):
  ``xllamacpp`` (:class:`~shoal.serving.engines.xllamacpp.XLlamaCppEngine`, llama.cpp's own
  server in-process, from a prebuilt wheel: the ``serving`` extra's) or ``llama-cpp-python``
  (:class:`~shoal.serving.engines.llamacpp.LlamaCppEngine`, compiled from source on
  install); ``auto`` (the default) takes llama-cpp-python where it is installed, else
  xllamacpp (docs/serving.md compares them);
- ``vllm``: not an in-process engine here: vLLM models run as ``ray.serve.llm`` LLM server
  deployments (:mod:`shoal.serving.engines.vllm` builds their ``LLMConfig``) and the ingress
  talks to them through :class:`~shoal.serving.clients.LLMServerClient`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from shoal.api.v1alpha1 import ModelSpec
from shoal.serving.engines.base import Engine
from shoal.serving.metrics import Backend, EngineMetrics


def make_engine(
    spec: ModelSpec, model_path: str | None = None, metrics_backend: Backend | None = "ray"
) -> Engine:
    """The in-process engine of a ``simulated`` or ``llamacpp`` model."""
    if spec.engine == "simulated":
        from shoal.serving.engines.simulated import SimulatedEngine

        metrics = EngineMetrics(spec.name, "vllm", metrics_backend) if metrics_backend else None
        return SimulatedEngine(spec.name, spec.engine_args, metrics)
    if spec.engine == "llamacpp":
        from shoal.contract.variants import llamacpp_speculation

        metrics = EngineMetrics(spec.name, "llamacpp", metrics_backend) if metrics_backend else None
        speculation = llamacpp_speculation(spec)
        if llamacpp_runtime(spec.engine_args) == "xllamacpp":
            if speculation is not None:
                raise ValueError(
                    f"model {spec.name}: speculative decoding on llama.cpp is served by the "
                    "llama-cpp-python runtime; set engineArgs.runtime: llama-cpp-python"
                )
            from shoal.serving.engines.xllamacpp import XLlamaCppEngine

            return XLlamaCppEngine(spec.name, spec.source, spec.engine_args, model_path, metrics)
        from shoal.serving.engines.llamacpp import LlamaCppEngine

        gguf_type = spec.quantization.gguf_type if spec.quantization else None
        return LlamaCppEngine(
            spec.name,
            spec.source,
            spec.engine_args,
            model_path,
            metrics,
            speculation=speculation,
            gguf_type=gguf_type,
        )
    raise ValueError(
        f"model {spec.name}: engine {spec.engine!r} runs as a ray.serve.llm deployment, "
        "not in a Shoal model server"
    )


RUNTIMES = ("auto", "xllamacpp", "llama-cpp-python")


def llamacpp_runtime(engine_args: dict[str, Any] | None) -> str:
    """The runtime a ``llamacpp`` model runs on here: ``engineArgs.runtime``, where ``auto``
    (the default) is llama-cpp-python when it is installed and xllamacpp otherwise."""
    runtime = str((engine_args or {}).get("runtime", "auto"))
    if runtime not in RUNTIMES:
        raise ValueError(f"engineArgs.runtime must be one of {list(RUNTIMES)}, not {runtime!r}")
    if runtime == "auto":
        return "llama-cpp-python" if importlib.util.find_spec("llama_cpp") else "xllamacpp"
    return runtime
