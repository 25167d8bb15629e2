"""PROVISIONAL: regenerate with `shoal engine-args`."""

VLLM_VERSION = "0.0.0"
ENGINE_ARGS: frozenset[str] = frozenset(
    (
        "max_model_len",
        "gpu_memory_utilization",
        "dtype",
        "enforce_eager",
        "quantization",
        "kv_cache_dtype",
        "speculative_config",
        "tensor_parallel_size",
        "enable_lora",
    )
)
