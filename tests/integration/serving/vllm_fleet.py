"""The fleet the vLLM tests run: one vLLM model, two llama.cpp models and one simulated model.

The vLLM model is Ray Serve LLM's server in a local Ray, exactly the deployment the operator
renders (``shoal.serving.app.build_app``), its server class subclassed only to record what it
is asked (:mod:`shoal.devtools.testing.llm_server`); on CPU it is the project's tiny Hugging Face Llama
(:mod:`shoal.serving.tinyhf`) under vLLM's CPU build, on a GPU machine a real model
(``SHOAL_VLLM_TEST_MODEL``); only the device settings differ. Routing is static, vLLM
first, so ``model: "auto"`` reaches it and its fallback is the first llama.cpp model.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal.contract import BuildArgs, model_deployment_name
from shoal.devtools.testing import require

VLLM_MODEL = "tiny"
LLAMA_MODELS = ("llama-a", "llama-b")
SIM_MODEL = "sim"
REPLIES = {"llama-a": "Llama A answers here.", "llama-b": "Llama B answers here."}
#: The tiny model's context (its config's max_position_embeddings): prompts stay well inside.
TINY_MAX_MODEL_LEN = 256


@dataclass
class VllmFleet:
    """A deployed fleet and what the tests need to know about its vLLM model."""

    base_url: str
    app: str
    vllm_model: str
    #: Where the vLLM model's tokenizer is (to count prompt tokens as vLLM does).
    tokenizer_path: str
    ray: Any

    @property
    def deployment(self) -> str:
        return model_deployment_name(self.vllm_model)


def require_vllm() -> None:
    """vLLM and its torch are installed (``hack/setup.sh``); fail where servers are required."""
    missing = [m for m in ("vllm", "torch", "transformers") if importlib.util.find_spec(m) is None]
    require(
        not missing,
        f"vLLM not installed ({', '.join(missing)}): hack/setup.sh --vllm "
        "(the `vllm` extra and hack/requirements-vllm-nodeps.txt)",
    )


@pytest.fixture(scope="module")
def offline_hub() -> Iterator[None]:
    """No Hugging Face hub calls from this process or the Ray it starts (inherited env)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def fleet_args(vllm_model: dict[str, Any], folder: Path, vllm_path: str | None) -> BuildArgs:
    """Build args of the four-model fleet around ``vllm_model`` (a ModelFleet model entry)."""
    llama = [
        {"name": name, "engine": "llamacpp", "tier": "cpu",
         "source": f"file://{folder}/{name}.gguf", "resources": {"cpu": "500m"},
         "engineArgs": {"n_ctx": 1024,
                        "tiny_model": {"name": f"vllm-fleet-{name}", "reply": REPLIES[name]}}}
        for name in LLAMA_MODELS
    ]  # fmt: skip
    one = {"minReplicas": 1, "maxReplicas": 1}
    return BuildArgs.parse(
        {
            "fleet_name": "vllm",
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "cpu", "costPerReplicaHour": "0.50"}],
                "models": [
                    {**vllm_model, "name": VLLM_MODEL, "tier": "cpu", **one},
                    *({**m, **one} for m in llama),
                    {"name": SIM_MODEL, "engine": "simulated", "tier": "cpu", **one},
                ],
            },
            "policy": {"strategy": "static",
                       "staticOrder": [VLLM_MODEL, *LLAMA_MODELS, SIM_MODEL]},
            "model_paths": {VLLM_MODEL: vllm_path} if vllm_path else {},
            "limits": {"max_tokens": 128, "first_token_timeout_seconds": 30,
                       "unhealthy_cooldown_seconds": 5},
        }
    )  # fmt: skip


def deploy(local_ray: Any, args: BuildArgs, tokenizer_path: str) -> Iterator[VllmFleet]:
    """Run the fleet's app until the module is done: what ``build_app`` builds, with Ray
    Serve LLM's server subclassed only to record what it is asked (stream or not)."""
    from ray import serve

    from shoal.contract import ingress_options
    from shoal.devtools.testing.llm_server import RecordingLLMServer
    from shoal.serving.app import _deployment, model_deployments
    from shoal.serving.engines.vllm import build_vllm_deployment
    from shoal.serving.ingress import FleetIngress

    models = model_deployments(args)
    models[VLLM_MODEL] = build_vllm_deployment(
        args, args.model(VLLM_MODEL), server_cls=RecordingLLMServer
    )
    ingress = _deployment(FleetIngress).options(**ingress_options(args))
    serve.run(ingress.bind(args.to_serve_args(), models), name=args.fleet_name, route_prefix="/")
    try:
        yield VllmFleet(
            base_url=local_ray.base_url,
            app=args.fleet_name,
            vllm_model=VLLM_MODEL,
            tokenizer_path=tokenizer_path,
            ray=local_ray,
        )
    finally:
        serve.delete(args.fleet_name)
