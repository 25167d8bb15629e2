"""Engines behind one protocol (:class:`~shoal.serving.engines.base.Engine`).

- ``simulated``: :class:`~shoal.serving.engines.simulated.SimulatedEngine`, a load-faithful
  simulator (vLLM's metric names, continuous batching, queueing);
- ``llamacpp``: :class:`~shoal.serving.engines.llamacpp.LlamaCppEngine`, llama.cpp on CPU;
- ``vllm``: not an in-process engine here: vLLM models run as ``ray.serve.llm`` LLM server
  deployments (:mod:`shoal.serving.engines.vllm` builds their ``LLMConfig``) and the ingress
  talks to them through :class:`~shoal.serving.clients.LLMServerClient`.
"""

from __future__ import annotations

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
        from shoal.serving.engines.llamacpp import LlamaCppEngine

        metrics = EngineMetrics(spec.name, "llamacpp", metrics_backend) if metrics_backend else None
        gguf_type = spec.quantization.gguf_type if spec.quantization else None
        return LlamaCppEngine(
            spec.name,
            spec.source,
            spec.engine_args,
            model_path,
            metrics,
            speculation=llamacpp_speculation(spec),
            gguf_type=gguf_type,
        )
    raise ValueError(
        f"model {spec.name}: engine {spec.engine!r} runs as a ray.serve.llm deployment, "
        "not in a Shoal model server"
    )
