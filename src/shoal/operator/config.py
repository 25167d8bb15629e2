"""Operator settings: from flags (``python -m shoal.operator``) and the environment (Helm).

Read once at start-up into an :class:`OperatorConfig` that lives in kopf's ``memo``; handlers
receive it from there, never from a module global.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs to know beyond the custom resources."""

    #: Default image of CPU Ray nodes when a fleet names none.
    serving_image: str = "rayproject/ray:2.60.0-py311"
    #: Default image of GPU Ray workers when a fleet names none.
    gpu_image: str = "rayproject/ray-llm:2.60.0-py311-cu128"
    #: Seconds between periodic re-checks of every fleet and policy (drift, KubeRay status).
    resync_seconds: float = 30.0
    #: Seconds a fleet waits before re-checking a missing or unfitted dependency.
    retry_seconds: float = 10.0
    #: Timeout of one Kubernetes API call.
    api_timeout_seconds: float = 30.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        """Settings from ``SHOAL_*`` environment variables (the Helm chart sets them)."""
        env = dict(os.environ if env is None else env)
        defaults = cls()
        return cls(
            serving_image=env.get("SHOAL_SERVING_IMAGE", defaults.serving_image),
            gpu_image=env.get("SHOAL_GPU_IMAGE", defaults.gpu_image),
            resync_seconds=float(env.get("SHOAL_RESYNC_SECONDS", defaults.resync_seconds)),
            retry_seconds=float(env.get("SHOAL_RETRY_SECONDS", defaults.retry_seconds)),
            api_timeout_seconds=float(
                env.get("SHOAL_API_TIMEOUT_SECONDS", defaults.api_timeout_seconds)
            ),
        )
