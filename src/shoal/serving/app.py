"""The Ray Serve application builder of a fleet: ``build_app(args) -> serve.Application``.

``serveConfigV2`` (rendered by the operator) and ``shoal up`` both point Ray Serve at
:func:`build_app` with :class:`~shoal.contract.BuildArgs` as ``args``. It binds one
deployment per model (a Shoal model server for ``llamacpp`` and ``simulated``, a
``ray.serve.llm`` LLM server for ``vllm``), each named and sized by
:func:`~shoal.contract.deployment_plans`, and the ingress deployment ("router") that
holds their handles.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from shoal.contract import BuildArgs, deployment_plans, ingress_options, local_path
from shoal.serving.ingress import FleetIngress
from shoal.serving.model_server import ModelServer


def model_deployments(args: BuildArgs) -> dict[str, Any]:
    """The bound deployment of every model, by model name."""
    bound: dict[str, Any] = {}
    for plan in deployment_plans(args):
        model = args.model(plan.model)
        if model.engine == "vllm":
            from shoal.serving.engines.vllm import build_vllm_deployment

            bound[model.name] = build_vllm_deployment(args, model)
            continue
        deployment = _deployment(ModelServer).options(**plan.deployment_options())
        # The tier's stream interval, where it sets one, in place of the fleet's default.
        limits = args.limits.model_copy(update={"stream_interval_ms": plan.stream_interval_ms})
        bound[model.name] = deployment.bind(
            model.to_k8s(), local_path(args, model), limits.model_dump()
        )
    return bound


def build_app(args: dict[str, Any] | BuildArgs) -> serve.Application:
    """The fleet's Ray Serve application (Ray Serve's application-builder convention)."""
    parsed = BuildArgs.parse(args)
    ingress = _deployment(FleetIngress).options(**ingress_options(parsed))
    app: serve.Application = ingress.bind(parsed.to_serve_args(), model_deployments(parsed))
    return app


def _deployment(cls: type) -> Any:
    """``serve.deployment(cls)`` (its overloads do not type-check for a bare class)."""
    return serve.deployment(cls)
