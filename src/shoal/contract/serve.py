"""The serving contract: what the Ray Serve application is built from, and how it is named.

The operator renders KubeRay's ``serveConfigV2`` with one application whose ``import_path`` is
:data:`IMPORT_PATH` (``shoal.serving.app:build_app``) and whose ``args`` are a
:class:`BuildArgs` dumped with :meth:`BuildArgs.to_serve_args`. Ray Serve calls the builder
with those args in every Ray cluster; ``shoal up`` calls it the same way on a laptop.

Both sides name deployments through this module: :func:`deployment_plans` gives, per model,
the Ray Serve deployment name, ``ray_actor_options``, ``max_ongoing_requests``,
``max_queued_requests`` and either a fixed ``num_replicas`` or an ``autoscaling_config``;
:func:`serve_config_deployments` renders them (plus the ingress) as ``serveConfigV2``
``deployments`` entries. The builder applies the very same settings, so a rendered config
and a built application always agree.

Pure functions over the API models; no Ray import here (the operator does not ship Ray).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shoal.api.v1alpha1 import ModelFleetSpec, ModelSpec, RoutingPolicySpec, TierSpec
from shoal.api.v1alpha1.common import ENV_NAME, parse_quantity
from shoal.contract.limits import IngressSettings, ServingLimits
from shoal.contract.lora import routable_models
from shoal.contract.replicas import ReplicaRange, replica_range
from shoal.contract.tenants import AccessConfig

#: Ray Serve "application builder" import path the operator puts in ``serveConfigV2``.
IMPORT_PATH = "shoal.serving.app:build_app"
#: Name of the ingress deployment (OpenAI API, router, fallback).
INGRESS_DEPLOYMENT = "router"
#: Prefix of every model deployment's name: ``model-<model name>``.
MODEL_DEPLOYMENT_PREFIX = "model-"
#: Route prefix of the fleet endpoint inside the Ray Serve HTTP proxy.
ROUTE_PREFIX = "/"
#: Where the operator mounts a ``pvc://claim/path`` source's claim in the Ray pods.
PVC_MOUNT_ROOT = "/mnt/shoal/pvc"

#: Environment variable of the Ray pods holding the API key of an ``openai`` embedder (from
#: the policy's ``embedder.apiKeySecretRef``; never written into ``serveConfigV2``).
EMBEDDER_API_KEY_ENV = "SHOAL_EMBEDDER_API_KEY"
#: Directory of the Ray pods holding the API keys of the fleet's external models (engine
#: openai), one file per model named after it, mounted from the Secrets their owners marked
#: for Shoal; overridden by the environment variable of the same role for ``shoal up``.
MODEL_KEYS_DIR = "/var/run/shoal/model-keys"
MODEL_KEYS_DIR_ENV = "SHOAL_MODEL_KEYS_DIR"
#: Environment variable of the Ray pods holding the key that signs completion ids, so that
#: any ingress replica can attribute a client's feedback (never in ``serveConfigV2``).
FEEDBACK_KEY_ENV = "SHOAL_FEEDBACK_KEY"
#: Environment variable naming a *file* that holds that key (in a cluster: the fleet's
#: Secret mounted as a file, not its value in the environment); read when
#: :data:`FEEDBACK_KEY_ENV` is not set.
FEEDBACK_KEY_FILE_ENV = "SHOAL_FEEDBACK_KEY_FILE"
#: The ingress's counter of feedback on logged routing decisions (propensity-weighted sums
#: per model, cluster, fit/heldout split and stat); the operator's refit guard reads it.
FEEDBACK_LOGGED_METRIC = "shoal_feedback_logged_total"
#: The label of the feedback series that names the ingress process which counted them (a
#: random name per process): a process that restarts starts new series, it resets none.
FEEDBACK_INSTANCE_LABEL = "ingress_instance"

#: Ray Serve settings the fleet runs with (environment of every Ray process: the operator sets
#: them on every Ray container, the serving image too, and
#: :func:`shoal.local.ray_env.local_ray_env` for a Ray started on this machine). They are Ray
#: Serve's own high-throughput mode: HAProxy instead of the Python HTTP proxy in front of each
#: node, the ingress replicas answering HTTP themselves ("direct ingress"), gRPC between
#: deployments, user code and the handle router on the replica's own event loop, buffered
#: request logs.
RAY_SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}


def ray_serve_env(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """:data:`RAY_SERVE_ENV` with an operator's ``overrides`` on top (Helm's
    ``serving.rayServeEnv``); raises ValueError for a name that is no environment variable."""
    bad = [k for k in overrides or {} if not re.match(ENV_NAME, k)]
    if bad:
        raise ValueError(f"not environment variable names: {', '.join(map(repr, bad))}")
    return {**RAY_SERVE_ENV, **(overrides or {})}


# Default CPUs a replica asks Ray for, per engine, when the model gives no resources.cpu.
_DEFAULT_NUM_CPUS: dict[str, float] = {
    "llamacpp": 1.0, "simulated": 0.1, "vllm": 1.0, "openai": 0.0,
}  # fmt: skip


class BuildArgs(BaseModel):
    """Everything :func:`shoal.serving.app.build_app` needs; the ``args`` of ``serveConfigV2``.

    ``fleet`` and ``policy`` are the validated API specs (camelCase or snake_case keys both
    accepted). ``router_artifact_path`` is where the operator mounts the router artifact
    ConfigMap inside the Ray pods (``shoal up`` writes a local file); it is required by the
    ``cluster`` strategy.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    fleet_name: str = Field(min_length=1, max_length=253, description="ModelFleet name.")
    namespace: str = Field(default="default", min_length=1, description="Fleet namespace.")
    fleet: ModelFleetSpec = Field(description="The fleet spec.")
    policy: RoutingPolicySpec = Field(description="The routing policy spec.")
    router_artifact_path: str | None = Field(
        default=None, description="File holding the fitted router artifact (cluster strategy)."
    )
    effective_alpha: str | None = Field(
        default=None,
        pattern=r"^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$",
        description="Quality weight to use instead of the policy's (set under budget pressure).",
    )
    replicas: dict[str, int] = Field(
        default_factory=dict,
        description="Fixed replica counts per model, set by Shoal's autoscaler; a model listed "
        "here gets num_replicas instead of Ray Serve autoscaling. 0 parks the model: no "
        "replicas, and the ingress routes around it.",
    )
    model_paths: dict[str, str] = Field(
        default_factory=dict,
        description="Local paths of model weights inside the Ray pods, per model; overrides "
        "resolving the model's source.",
    )
    limits: ServingLimits = Field(default_factory=ServingLimits)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    log_prompts: bool = Field(
        default=False, description="Log prompt text (off by default: prompts stay out of logs)."
    )

    @model_validator(mode="after")
    def _check_references(self) -> BuildArgs:
        names = {m.name for m in self.fleet.models}
        unknown = sorted(set(self.replicas) - names)
        unknown += sorted(set(self.model_paths) - names)
        if self.policy.strategy == "static":
            routable = set(routable_models(self.fleet))  # a LoRA adapter: <model>:<adapter>
            unknown += [n for n in self.policy.static_order if n not in routable]
        if self.policy.fallback_model and self.policy.fallback_model not in names:
            unknown.append(self.policy.fallback_model)
        if unknown:
            raise ValueError(f"unknown models referenced: {', '.join(sorted(set(unknown)))}")
        if any(n < 0 for n in self.replicas.values()):
            raise ValueError("replicas must be >= 0")
        if self.policy.strategy == "cluster" and not self.router_artifact_path:
            raise ValueError("the cluster strategy needs router_artifact_path")
        return self

    @property
    def parked(self) -> frozenset[str]:
        """Models Shoal's autoscaler scaled to zero."""
        return frozenset(m for m, n in self.replicas.items() if n == 0)

    @classmethod
    def parse(cls, args: dict[str, Any] | BuildArgs) -> BuildArgs:
        """Validate ``serveConfigV2`` args (or pass a ready object through)."""
        return args if isinstance(args, BuildArgs) else cls.model_validate(args)

    def to_serve_args(self) -> dict[str, Any]:
        """JSON-ready args for ``serveConfigV2`` (API specs in their camelCase wire form)."""
        out = self.model_dump(mode="json", exclude={"fleet", "policy"}, exclude_defaults=True)
        out["fleet_name"] = self.fleet_name
        out["fleet"] = self.fleet.to_k8s()
        out["policy"] = self.policy.to_k8s()
        return out

    def tier_of(self, model: ModelSpec) -> TierSpec:
        """The tier a model belongs to (validated to exist by the API models)."""
        return next(t for t in self.fleet.tiers if t.name == model.tier)

    def model(self, name: str) -> ModelSpec:
        """A model of the fleet by name (KeyError when absent)."""
        for m in self.fleet.models:
            if m.name == name:
                return m
        raise KeyError(name)


class ModelDeploymentPlan(BaseModel):
    """How one model runs as a Ray Serve deployment."""

    model_config = ConfigDict(extra="forbid")

    model: str
    tier: str
    engine: Literal["vllm", "llamacpp", "simulated", "openai"]
    deployment_name: str
    ray_actor_options: dict[str, Any]
    max_ongoing_requests: int
    max_queued_requests: int
    replicas: ReplicaRange = Field(
        description="What Ray Serve may run: a fixed count (n, n, n), parked (0, 1, 0), or the "
        "model's autoscaling range."
    )
    num_replicas: int | None = None
    autoscaling_config: dict[str, Any] | None = None
    cost_per_replica_hour: str = "0"
    #: Streaming: the most milliseconds a replica holds generated text before sending it (the
    #: tier's ``streamIntervalMilliseconds``, else the engine's default; see
    #: :func:`stream_interval_ms`).
    stream_interval_ms: float = 50.0

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` (and the serveConfigV2 entry)."""
        out: dict[str, Any] = {
            "name": self.deployment_name,
            "ray_actor_options": dict(self.ray_actor_options),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }
        if self.autoscaling_config is not None:
            out["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            out["num_replicas"] = self.num_replicas
        return out


def model_deployment_name(model: str) -> str:
    """Ray Serve deployment name of a model: ``model-<name>``."""
    return f"{MODEL_DEPLOYMENT_PREFIX}{model}"


def local_path(args: BuildArgs, model: ModelSpec) -> str | None:
    """Where ``model``'s weights are on the Ray node's file system, if they are local.

    ``model_paths`` wins; ``file:///p`` is ``/p``; ``pvc://claim/p`` is
    ``{PVC_MOUNT_ROOT}/claim/p``; ``hf://``, ``s3://`` and ``gs://`` are remote (None).
    """
    if model.name in args.model_paths:
        return args.model_paths[model.name]
    source = model.source or ""
    if source.startswith("file://"):
        return source[len("file://") :]
    if source.startswith("pvc://"):
        return f"{PVC_MOUNT_ROOT}/{source[len('pvc://') :]}"
    return None


def ray_actor_options(model: ModelSpec) -> dict[str, Any]:
    """Ray resources one replica of ``model`` asks for."""
    opts: dict[str, Any] = {}
    cpu = model.resources.cpu if model.resources else None
    opts["num_cpus"] = float(parse_quantity(cpu)) if cpu else _DEFAULT_NUM_CPUS[model.engine]
    if model.resources and model.resources.memory:
        opts["memory"] = int(parse_quantity(model.resources.memory))
    if model.accelerator is not None:
        opts["num_gpus"] = model.accelerator.count
        opts["accelerator_type"] = model.accelerator.type
    return opts


#: Ray Serve LLM's stream batching interval for vllm models whose tier sets none (ms): Ray
#: Serve LLM's own default until ``make bench-peer`` (``--stream-interval-ms``) has measured a
#: shorter one that costs no requests per second (docs/serving.md). The first streamed token
#: waits for the first batch, so the interval is a floor on a streamed answer's TTFT.
VLLM_STREAM_INTERVAL_MS = 50.0


def stream_interval_ms(args: BuildArgs, model: ModelSpec) -> float:
    """How long a model's replica may hold streamed output before sending it: the tier's
    ``streamIntervalMilliseconds``; unset, :data:`VLLM_STREAM_INTERVAL_MS` for vllm models
    and the fleet's ``limits.stream_interval_ms`` for Shoal's own model servers."""
    tier = args.tier_of(model)
    if tier.stream_interval_milliseconds is not None:
        return float(tier.stream_interval_milliseconds)
    if model.engine == "vllm":
        return VLLM_STREAM_INTERVAL_MS
    return args.limits.stream_interval_ms


def deployment_plan(args: BuildArgs, model: ModelSpec) -> ModelDeploymentPlan:
    """The deployment settings of one model."""
    tier = args.tier_of(model)
    scaling = tier.autoscaling
    target = scaling.target_ongoing_requests
    max_ongoing = max(2 * target, 4)
    plan: dict[str, Any] = {
        "model": model.name,
        "tier": tier.name,
        "engine": model.engine,
        "deployment_name": model_deployment_name(model.name),
        "ray_actor_options": ray_actor_options(model),
        "max_ongoing_requests": max_ongoing,
        # Beyond this many queued requests per caller, Ray Serve refuses at once
        # (BackPressureError) and the ingress falls back to the next ranked model.
        "max_queued_requests": 4 * max_ongoing,
        "cost_per_replica_hour": tier.cost_per_replica_hour,
        "stream_interval_ms": stream_interval_ms(args, model),
    }
    fixed = args.replicas.get(model.name)
    up, down = scaling.scale_up_cooldown_seconds, scaling.scale_down_cooldown_seconds
    if fixed == 0:
        # Parked: Ray Serve's config cannot say num_replicas 0, but an autoscaling range of
        # 0..1 starting at 0 can. Ray starts a replica only for a request that reaches the
        # deployment, and the ingress sends none while the model is parked; Shoal's
        # autoscaler brings it back (num_replicas >= 1) when the router asks for it.
        span, up = ReplicaRange(min=0, max=1, initial=0), 0
    elif fixed is not None:
        span = ReplicaRange(min=fixed, max=fixed, initial=fixed)
        plan["num_replicas"] = fixed
    else:
        span = replica_range(model, tier)
    plan["replicas"] = span
    if fixed is None or fixed == 0:
        plan["autoscaling_config"] = {
            "min_replicas": span.min,
            "initial_replicas": span.initial,
            "max_replicas": span.max,
            "target_ongoing_requests": target,
            "upscale_delay_s": up,
            "downscale_delay_s": down,
        }
    return ModelDeploymentPlan.model_validate(plan)


def deployment_plans(args: BuildArgs) -> list[ModelDeploymentPlan]:
    """Deployment settings of every model the fleet runs itself, in spec order (a model
    served outside the fleet, engine openai, has no deployment)."""
    return [deployment_plan(args, m) for m in args.fleet.fleet_models()]


def ingress_options(args: BuildArgs, access: AccessConfig | None = None) -> dict[str, Any]:
    """``Deployment.options`` of the ingress deployment.

    ``access`` (tenants, key digests, limits) goes in as the deployment's ``user_config``, not
    in ``args``: Ray Serve applies a changed ``user_config`` to the running replicas in place,
    where changed ``args`` would rebuild the whole application. None: an open fleet.
    """
    out: dict[str, Any] = {
        "name": INGRESS_DEPLOYMENT,
        "num_replicas": args.ingress.num_replicas,
        "ray_actor_options": {"num_cpus": args.ingress.num_cpus},
        "max_ongoing_requests": args.ingress.max_ongoing_requests,
    }
    if access is not None:
        out["user_config"] = access.to_user_config()
    return out


def serve_config_deployments(
    args: BuildArgs, access: AccessConfig | None = None
) -> list[dict[str, Any]]:
    """``serveConfigV2`` ``deployments`` entries (ingress first), agreeing with the builder.

    vLLM models are listed too: their deployment is ``ray.serve.llm``'s LLM server, renamed
    to ``model-<name>`` by the builder, so the operator can override their replicas alike.
    """
    ingress = ingress_options(args, access)
    return [ingress] + [p.deployment_options() for p in deployment_plans(args)]


def serve_application(args: BuildArgs, access: AccessConfig | None = None) -> dict[str, Any]:
    """One ``serveConfigV2`` ``applications`` entry for the fleet (``access``: see
    :func:`ingress_options`)."""
    return {
        "name": args.fleet_name,
        "route_prefix": ROUTE_PREFIX,
        "import_path": IMPORT_PATH,
        "args": args.to_serve_args(),
        "deployments": serve_config_deployments(args, access),
    }
