"""The serving contract: what the operator renders and the Ray Serve app reads.

One layer above :mod:`shoal.api` and below everything else, so that planning (which renders
``serveConfigV2``) and serving (which builds the application from it) share one definition
without either importing the other, and the operator never imports Ray:

- :mod:`shoal.contract.serve`: the application's build arguments, deployment names and
  plans, and the rendered ``serveConfigV2`` entries;
- :mod:`shoal.contract.limits`: the ingress's request limits and sizing;
- :mod:`shoal.contract.replicas`: a model's replica range, derived in one place;
- :mod:`shoal.contract.cost`: one cost per request in USD, and savings against a reference;
- :mod:`shoal.contract.lora`: LoRA adapters (where each lives, their routable names, the
  store's settings for the replicas);
- :mod:`shoal.contract.tenants`: who may call the fleet and within what limits (the
  ingress's ``user_config``).
"""

from shoal.contract.limits import IngressSettings, ServingLimits
from shoal.contract.replicas import ReplicaRange, replica_range
from shoal.contract.serve import (
    EMBEDDER_API_KEY_ENV,
    FEEDBACK_KEY_ENV,
    FEEDBACK_KEY_FILE_ENV,
    IMPORT_PATH,
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT_PREFIX,
    MODEL_KEYS_DIR,
    MODEL_KEYS_DIR_ENV,
    PVC_MOUNT_ROOT,
    RAY_SERVE_ENV,
    ROUTE_PREFIX,
    BuildArgs,
    ModelDeploymentPlan,
    deployment_plan,
    deployment_plans,
    ingress_options,
    local_path,
    model_deployment_name,
    ray_actor_options,
    ray_serve_env,
    serve_application,
    serve_config_deployments,
)
from shoal.contract.tenants import (
    MIN_KEY_LENGTH,
    AccessConfig,
    StoreFailureMode,
    TenantAccess,
    TenantLimits,
    key_digest,
)

__all__ = [
    "EMBEDDER_API_KEY_ENV",
    "FEEDBACK_KEY_ENV",
    "FEEDBACK_KEY_FILE_ENV",
    "IMPORT_PATH",
    "INGRESS_DEPLOYMENT",
    "MIN_KEY_LENGTH",
    "MODEL_DEPLOYMENT_PREFIX",
    "MODEL_KEYS_DIR",
    "MODEL_KEYS_DIR_ENV",
    "PVC_MOUNT_ROOT",
    "RAY_SERVE_ENV",
    "ROUTE_PREFIX",
    "AccessConfig",
    "BuildArgs",
    "IngressSettings",
    "ModelDeploymentPlan",
    "ReplicaRange",
    "ServingLimits",
    "StoreFailureMode",
    "TenantAccess",
    "TenantLimits",
    "deployment_plan",
    "deployment_plans",
    "ingress_options",
    "key_digest",
    "local_path",
    "model_deployment_name",
    "ray_actor_options",
    "ray_serve_env",
    "replica_range",
    "serve_application",
    "serve_config_deployments",
]
