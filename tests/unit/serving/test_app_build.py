"""The builder binds deployments named and sized exactly as the operator's contract says."""

from __future__ import annotations

from typing import Any

import pytest
from serving_fleets import fleet_spec

from shoal.contract import INGRESS_DEPLOYMENT, BuildArgs, deployment_plans

serve = pytest.importorskip("ray.serve", reason="ray[serve] not installed")


def _args(models: list[dict[str, Any]], **extra: Any) -> BuildArgs:
    return BuildArgs.parse(
        {
            "fleet_name": "f",
            "fleet": fleet_spec(models),
            "policy": {"strategy": "static", "staticOrder": [models[0]["name"]]},
            **extra,
        }
    )


def test_bound_deployments_follow_the_plans() -> None:
    from shoal.serving.app import build_app

    args = _args(
        [
            {"name": "sim", "engine": "simulated"},
            {"name": "gguf", "engine": "llamacpp", "source": "pvc://models/tiny.gguf"},
        ],
        replicas={"sim": 3},
    )
    app = build_app(args.to_serve_args())
    ingress = app._bound_deployment
    assert ingress.name == INGRESS_DEPLOYMENT
    bound_args, handles = ingress.init_args
    assert BuildArgs.parse(bound_args) == args
    plans = {p.model: p for p in deployment_plans(args)}
    for model, child in handles.items():
        deployment = child._bound_deployment
        plan = plans[model]
        assert deployment.name == plan.deployment_name
        cfg = deployment._deployment_config
        assert cfg.max_ongoing_requests == plan.max_ongoing_requests
        assert cfg.max_queued_requests == plan.max_queued_requests
        assert deployment.ray_actor_options["num_cpus"] == plan.ray_actor_options["num_cpus"]
    assert handles["sim"]._bound_deployment._deployment_config.num_replicas == 3
    assert handles["gguf"]._bound_deployment.init_args[1] == "/mnt/shoal/pvc/models/tiny.gguf"


def test_vllm_models_are_validated_llm_configs() -> None:
    pytest.importorskip("pyarrow", reason="pyarrow (ray.serve.llm's config) not installed")
    from shoal.serving.engines.vllm import llm_config

    args = _args(
        [
            {"name": "qwen", "engine": "vllm", "source": "hf://Qwen/Qwen2.5-0.5B-Instruct",
             "accelerator": {"type": "L4", "count": 2}, "engineArgs": {"max_model_len": 4096},
             "loraAdapters": [{"name": "sql", "source": "s3://bucket/loras/sql"}]},
            {"name": "big", "engine": "vllm", "source": "s3://bucket/models/big"},
        ]
    )  # fmt: skip
    qwen = llm_config(args, args.model("qwen"))
    assert qwen.model_id == "qwen"
    assert qwen.model_loading_config.model_source == "Qwen/Qwen2.5-0.5B-Instruct"
    assert qwen.accelerator_type == "L4"
    assert qwen.engine_kwargs == {"max_model_len": 4096, "tensor_parallel_size": 2,
                                  "enable_lora": True, "max_loras": 1}  # fmt: skip
    assert qwen.deployment_config["name"] == "model-qwen"
    assert qwen.deployment_config["autoscaling_config"]["max_replicas"] == 4
    assert qwen.lora_config.dynamic_lora_loading_path == "s3://bucket/loras"
    assert qwen.placement_group_config is None  # Ray Serve LLM's GPU bundles
    big = llm_config(args, args.model("big"))
    assert big.model_loading_config.model_source.bucket_uri == "s3://bucket/models/big"


def test_vllm_models_without_accelerator_run_on_cpus() -> None:
    pytest.importorskip("pyarrow", reason="pyarrow (ray.serve.llm's config) not installed")
    from shoal.serving.engines.vllm import llm_config

    args = _args(
        [
            {"name": "cpu", "engine": "vllm", "source": "file:///models/tiny",
             "resources": {"cpu": "2", "memory": "16Gi"},
             "engineArgs": {"dtype": "float32", "max_model_len": 256}},
            {"name": "small", "engine": "vllm", "source": "file:///models/tiny"},
        ]
    )  # fmt: skip
    cpu = llm_config(args, args.model("cpu"))
    assert cpu.accelerator_type is None
    assert cpu.placement_group_config == {"bundles": [{"CPU": 2.0}], "strategy": "PACK"}
    assert cpu.runtime_env == {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "4"}}
    assert cpu.engine_kwargs == {"dtype": "float32", "max_model_len": 256}
    assert "tensor_parallel_size" not in cpu.engine_kwargs
    small = llm_config(args, args.model("small"))
    assert small.placement_group_config["bundles"] == [{"CPU": 1.0}]
    assert small.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_vllm_config_errors() -> None:
    pytest.importorskip("pyarrow", reason="pyarrow (ray.serve.llm's config) not installed")
    from shoal.serving.engines.vllm import llm_config

    bad_accel = _args(
        [{"name": "m", "engine": "vllm", "source": "hf://o/m",
          "accelerator": {"type": "NoSuchGPU"}}]
    )  # fmt: skip
    with pytest.raises(ValueError, match="accelerator"):
        llm_config(bad_accel, bad_accel.model("m"))
    bad_lora = _args(
        [{"name": "m", "engine": "vllm", "source": "hf://o/m",
          "loraAdapters": [{"name": "a", "source": "s3://bk/x/a"},
                           {"name": "b", "source": "s3://bk/y/b"}]}]
    )  # fmt: skip
    with pytest.raises(ValueError, match="share one parent"):
        llm_config(bad_lora, bad_lora.model("m"))


def test_vllm_typed_fields_reach_the_llm_config() -> None:
    pytest.importorskip("pyarrow", reason="pyarrow (ray.serve.llm's config) not installed")
    from shoal.serving.engines.vllm import llm_config

    args = _args(
        [{"name": "m", "engine": "vllm", "source": "hf://o/m-awq",
          "accelerator": {"type": "L4"}, "engineArgs": {"max_model_len": 4096},
          "quantization": {"method": "awq", "kvCacheDtype": "fp8"},
          "speculative": {"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMax": 3},
          "loraAdapters": [{"name": "sql", "source": "gs://adapters/m/sql"}]}]
    )  # fmt: skip
    config = llm_config(args, args.model("m"))
    assert config.engine_kwargs == {
        "max_model_len": 4096, "tensor_parallel_size": 1, "quantization": "awq_marlin",
        "kv_cache_dtype": "fp8",
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 4,
                               "prompt_lookup_max": 3},
        "enable_lora": True, "max_loras": 1,
    }  # fmt: skip
    assert config.lora_config.dynamic_lora_loading_path == "gs://adapters/m"
