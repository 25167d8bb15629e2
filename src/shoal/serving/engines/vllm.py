"""vLLM models as ``ray.serve.llm`` deployments: the fleet's models as ``LLMConfig`` objects.

A ``vllm`` model is not run by a Shoal model server: :func:`llm_config` describes it to Ray
Serve LLM (weights source, engine arguments, accelerator, LoRA adapters and the very
deployment settings of :func:`shoal.contract.deployment_plan`, under the same
``model-<name>`` deployment name), and :func:`build_vllm_deployment` binds its
``LLMServer``. Constructing an ``LLMConfig`` validates it, so this path is checked on
machines without a GPU or vLLM too; only serving needs them.

``ray.serve.llm`` itself refuses to import without vLLM (its request models come from
vLLM), so on such machines :func:`llm_config_class` falls back to the class it re-exports,
``ray.llm._internal.serve.core.configs.llm_config.LLMConfig``: the same fields and
validators (``ray.serve.llm.LLMConfig`` is a bare subclass of it).

LoRA adapters: Ray Serve LLM downloads them from their object store in the replica, with
boto3 for ``s3://``; the replica's environment names the store's endpoint, region and
credentials file (:func:`shoal.contract.lora.lora_store_env`), never a key.

Devices: a model with an ``accelerator`` runs on that GPU type (Ray Serve LLM's default
placement: one bundle per tensor-parallel worker); a model without one runs on CPUs, with
vLLM's CPU build (the ``vllm`` extra, as CI runs it): one placement-group bundle of the
replica's CPUs, and vLLM's KV cache sized through ``VLLM_CPU_KVCACHE_SPACE`` (see
:func:`cpu_kv_cache_gib`). Nothing else differs between the two.
"""

from __future__ import annotations

from typing import Any

from shoal.api.v1alpha1 import ModelSpec
from shoal.api.v1alpha1.common import parse_quantity
from shoal.contract import BuildArgs, ModelDeploymentPlan, deployment_plan, local_path
from shoal.contract.lora import adapter_folder, lora_store_env
from shoal.contract.variants import vllm_engine_kwargs

#: vLLM's CPU KV cache (GiB) when the model declares no memory; a quarter of a declared
#: ``resources.memory`` otherwise (weights, activations and the engine need the rest).
DEFAULT_CPU_KV_CACHE_GIB = 1


def model_source(args: BuildArgs, model: ModelSpec) -> str | dict[str, str]:
    """``model_loading_config.model_source`` for a model's ``source``."""
    path = local_path(args, model)
    if path is not None:
        return path
    source = model.source or ""
    if source.startswith("hf://"):
        return source[len("hf://") :]
    if source.startswith(("s3://", "gs://")):
        return {"bucket_uri": source}
    raise ValueError(f"model {model.name}: unsupported source {source!r} for vllm")


def lora_config(model: ModelSpec) -> dict[str, Any] | None:
    """Ray Serve LLM's LoRA settings: adapters must sit side by side in one bucket folder,
    each in a folder named like the adapter (clients address them as ``<model>:<adapter>``).
    Ray Serve LLM loads adapters from object stores only (its ``LoraConfig`` refuses a local
    path); the fleet's CEL rules refuse other sources at admission."""
    folder = adapter_folder(model)
    if folder is None:
        return None
    return {
        "dynamic_lora_loading_path": folder,
        "max_num_adapters_per_replica": len(model.lora_adapters),
    }


def deployment_config(plan: ModelDeploymentPlan) -> dict[str, Any]:
    """The LLMConfig ``deployment_config``: Shoal's plan for the model, minus what Ray Serve
    LLM derives itself (the replica's resources come from the engine's placement group)."""
    options = plan.deployment_options()
    options.pop("ray_actor_options", None)
    return options


def cpu_kv_cache_gib(model: ModelSpec) -> int:
    """``VLLM_CPU_KVCACHE_SPACE`` of a CPU replica: a quarter of its memory, at least 1 GiB."""
    memory = model.resources.memory if model.resources else None
    if not memory:
        return DEFAULT_CPU_KV_CACHE_GIB
    return max(1, int(parse_quantity(memory) / (4 * 1024**3)))


def device_config(plan: ModelDeploymentPlan, model: ModelSpec) -> dict[str, Any]:
    """The LLMConfig fields that place the engine: a GPU type, or CPUs and a CPU KV cache;
    and the replica's environment (the CPU KV cache, the LoRA adapters' store)."""
    env = lora_store_env(model)
    if model.accelerator is not None:
        out: dict[str, Any] = {"accelerator_type": model.accelerator.type}
    else:
        cpus = float(plan.ray_actor_options.get("num_cpus", 1.0))
        out = {"placement_group_config": {"bundles": [{"CPU": cpus}], "strategy": "PACK"}}
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib(model))
    if env:
        out["runtime_env"] = {"env_vars": env}
    return out


def llm_config_class() -> Any:
    """``ray.serve.llm.LLMConfig``, or the class it re-exports where vLLM is not installed."""
    import importlib

    try:
        return importlib.import_module("ray.serve.llm").LLMConfig
    except ImportError:
        return importlib.import_module("ray.llm._internal.serve.core.configs.llm_config").LLMConfig


def llm_config(args: BuildArgs, model: ModelSpec) -> Any:
    """The validated ``LLMConfig`` of a ``vllm`` model (see :func:`llm_config_class`)."""
    LLMConfig = llm_config_class()

    if model.engine != "vllm":
        raise ValueError(f"model {model.name} does not use the vllm engine")
    plan = deployment_plan(args, model)
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": model.name, "model_source": model_source(args, model)},
        # engineArgs plus the typed quantisation and speculative decoding, rendered
        "engine_kwargs": vllm_engine_kwargs(model),
        "deployment_config": deployment_config(plan),
        # How long Ray Serve LLM batches streamed output (the tier's setting, else Shoal's
        # measured default): the first token waits for the first batch.
        "experimental_configs": {"stream_batching_interval_ms": plan.stream_interval_ms},
    }
    config.update(device_config(plan, model))
    lora = lora_config(model)
    if lora is not None:
        config["lora_config"] = lora
    return LLMConfig(**config)


def build_vllm_deployment(args: BuildArgs, model: ModelSpec, server_cls: Any = None) -> Any:
    """The bound ``LLMServer`` deployment of a ``vllm`` model, named ``model-<name>``
    (``server_cls``: a subclass of ``LLMServer`` in its place, for tests that watch it)."""
    from ray.serve.llm import build_llm_deployment

    plan = deployment_plan(args, model)
    return build_llm_deployment(
        llm_config(args, model),
        override_serve_options={"name": plan.deployment_name},
        deployment_cls=server_cls,
    )
