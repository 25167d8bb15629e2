"""Operator settings: from flags (``python -m shoal.operator``) and the environment (Helm).

Read once at start-up into an :class:`OperatorConfig` that lives in kopf's ``memo``; handlers
receive it from there, never from a module global.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal

from shoal.api.v1alpha1.common import MONEY
from shoal.api.v1alpha1.fleet import AutoscalerMode
from shoal.autoscaling import PolicySettings
from shoal.contract import ray_serve_env
from shoal.planning.children import DEFAULT_GPU_IMAGE, DEFAULT_SERVING_IMAGE
from shoal.planning.tenants import AccessSettings

#: What the ingress does with tenant limits while its shared usage store is unreachable.
STORE_FAILURE_MODES = ("share", "open", "closed")

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def _allowlist(raw: str) -> str:
    """``SHOAL_OUTBOUND_ALLOW`` checked (ValueError naming it on a bad entry), as given."""
    from shoal.operator.destinations import Allowlist

    try:
        Allowlist.parse(raw)
    except ValueError as exc:
        raise ValueError(f"SHOAL_OUTBOUND_ALLOW: {exc}") from exc
    return raw.strip()


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"{name} must be true or false, not {raw!r}")
    return value in _TRUE


def _env_map(env: dict[str, str], name: str) -> dict[str, str]:
    raw = env.get(name, "").strip()
    try:
        overrides = json.loads(raw) if raw else {}
    except ValueError:
        overrides = None
    if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
        raise ValueError(f"{name} must be a JSON object of strings, not {raw!r}")
    try:
        return ray_serve_env(overrides)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None


def _money(env: dict[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not re.match(MONEY, raw):
        raise ValueError(f"{name} must be a decimal amount such as 40.00, not {raw!r}")
    return raw


def _fqdn_policies(raw: str) -> str | None:
    value = raw.strip().lower()
    if value not in ("", "cilium"):
        raise ValueError(f"SHOAL_FQDN_POLICIES must be empty or 'cilium', not {raw!r}")
    return value or None


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs to know beyond the custom resources."""

    #: Default image of CPU Ray nodes when a fleet names none (Shoal's serving image).
    serving_image: str = DEFAULT_SERVING_IMAGE
    #: Default image of GPU Ray workers when a fleet names none.
    gpu_image: str = DEFAULT_GPU_IMAGE
    #: Environment of every Ray container: Shoal's Ray Serve settings and the chart's overrides.
    ray_serve_env: dict[str, str] = field(default_factory=ray_serve_env)
    #: Namespace the operator runs in (the chart sets it from the pod's own); fleets'
    #: NetworkPolicies admit the operator from there only. None: from the fleet's own
    #: namespace only (never from any namespace).
    operator_namespace: str | None = None
    #: Namespace of KubeRay's controller, for the same policies. None: the fleet's own
    #: namespace only.
    kuberay_namespace: str | None = None
    #: The CNI's own policies that name hosts, beside each fleet's NetworkPolicy where its
    #: egress is Restricted: "cilium" (a CiliumNetworkPolicy with toFQDNs); None: none.
    fqdn_policies: str | None = None
    #: Seconds between periodic re-checks of every fleet and policy (drift, KubeRay status).
    resync_seconds: float = 30.0
    #: Most periodic jobs (re-checks, autoscaler evaluations) the operator starts per second;
    #: with many fleets their intervals grow so that this holds (:mod:`shoal.operator.resync`).
    periodic_rate_per_second: float = 10.0
    #: Seconds a fleet waits before re-checking a missing or unfitted dependency.
    retry_seconds: float = 10.0
    #: Timeout of one Kubernetes API call.
    api_timeout_seconds: float = 30.0
    #: Where the operator may send requests on a policy's behalf (calibration URIs, embedder
    #: endpoints): host names and CIDR ranges, comma-separated; empty: anywhere but
    #: link-local and metadata addresses, which are always refused
    #: (:mod:`shoal.operator.destinations`).
    outbound_allow: str = ""
    #: Base URL of the Prometheus the autoscaler queries; empty: the autoscaler is off.
    prometheus_url: str = ""
    #: Master switch of Shoal's autoscaler (off: Ray Serve autoscales within tier bounds).
    autoscaler_enabled: bool = True
    #: Seconds between two evaluations of a fleet by the autoscaler.
    autoscaler_interval_seconds: float = 15.0
    #: Decide and report only (status, events, metrics); never change replicas.
    autoscaler_dry_run: bool = False
    #: Metrics older than this make the autoscaler hold a model where it is.
    autoscaler_stale_seconds: float = 60.0
    #: Budget in USD per hour for fleets without spec.budget (decimal string); None: none.
    default_budget_per_hour: str | None = None
    #: Spare capacity for bursts, percent of the recent swing (tiers may override it).
    autoscaler_headroom_percent: int = PolicySettings.headroom_percent
    #: Seconds back the busiest arrival rate is looked for (the headroom's swing).
    autoscaler_burst_window_seconds: float = 600.0
    #: Most one decision may multiply a model's replicas by.
    autoscaler_max_scale_up_factor: float = PolicySettings.max_scale_up_factor
    #: A queue asks for the capacity that drains it within this many seconds.
    autoscaler_queue_drain_seconds: float = PolicySettings.queue_drain_seconds
    #: How long a new replica takes to serve (what piles up meanwhile is drained too; 0: off).
    autoscaler_cold_start_seconds: float = PolicySettings.cold_start_seconds
    #: Poisson standard deviations above the short window's rate that make a step (0: off).
    autoscaler_step_sigma: float = PolicySettings.step_sigma
    #: After a burst, the replicas kept carry the rate plus this many standard deviations.
    autoscaler_release_sigma: float = PolicySettings.release_sigma
    #: Spillover's bridge: while a model's replicas start, the model its requests spill to
    #: is sized for this many times what they bring beyond the ready replicas (0: off). The
    #: study's recommended design (docs/autoscaling.md) is 1 with spillover's sloShare 0.5;
    #: it acts only for fleets whose routing policy spills.
    autoscaler_spill_bridge: float = 1.0
    #: Tenant limits while the ingress's shared usage store is unreachable: share, open, closed.
    tenant_store_failure_mode: str = "share"
    #: Seconds between two shares of an ingress replica's usage with the others.
    tenant_sync_interval_seconds: float = 0.2
    #: Seconds between two reads of every tenant's key Secrets (a rotated key takes effect
    #: within about this long, plus a tenth for jitter).
    tenant_key_resync_seconds: float = 10.0
    #: Seconds between two reads of every tenant's use from Prometheus into its status.
    tenant_usage_interval_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.autoscaler_interval_seconds <= 0 or self.autoscaler_stale_seconds <= 0:
            raise ValueError("autoscaler interval and stale limit must be positive seconds")
        if self.resync_seconds <= 0 or self.periodic_rate_per_second <= 0:
            raise ValueError("resync interval and periodic rate must be positive")
        if not 0 <= self.autoscaler_headroom_percent <= 400:
            raise ValueError("SHOAL_AUTOSCALER_HEADROOM_PERCENT must be within 0..400")
        if self.autoscaler_max_scale_up_factor < 1:
            raise ValueError("SHOAL_AUTOSCALER_MAX_SCALE_UP_FACTOR must be at least 1")
        if self.autoscaler_queue_drain_seconds <= 0 or self.autoscaler_burst_window_seconds <= 0:
            raise ValueError(
                "SHOAL_AUTOSCALER_QUEUE_DRAIN_SECONDS and SHOAL_AUTOSCALER_BURST_WINDOW_SECONDS "
                "must be positive seconds"
            )
        if not 0 <= self.autoscaler_cold_start_seconds <= 3600:
            raise ValueError("SHOAL_AUTOSCALER_COLD_START_SECONDS must be within 0..3600")
        if not (0 <= self.autoscaler_step_sigma <= 10 and 0 <= self.autoscaler_release_sigma <= 10):
            raise ValueError(
                "SHOAL_AUTOSCALER_STEP_SIGMA and SHOAL_AUTOSCALER_RELEASE_SIGMA must be within "
                "0..10 (standard deviations)"
            )

        if not 0 <= self.autoscaler_spill_bridge <= 4:
            raise ValueError(
                "SHOAL_AUTOSCALER_SPILL_BRIDGE must be within 0..4 (times the requests a "
                "model's replicas cannot carry while they start)"
            )
        if self.tenant_store_failure_mode not in STORE_FAILURE_MODES:
            raise ValueError(
                "SHOAL_TENANT_STORE_FAILURE_MODE must be share, open or closed, not "
                f"{self.tenant_store_failure_mode!r}"
            )
        if not 0 < self.tenant_sync_interval_seconds <= 10:
            raise ValueError("SHOAL_TENANT_SYNC_INTERVAL_SECONDS must be within (0, 10]")
        if self.tenant_key_resync_seconds <= 0 or self.tenant_usage_interval_seconds <= 0:
            raise ValueError(
                "SHOAL_TENANT_KEY_RESYNC_SECONDS and SHOAL_TENANT_USAGE_INTERVAL_SECONDS must "
                "be positive seconds"
            )

    def access_settings(self) -> AccessSettings:
        """The tenants' settings every fleet's access config carries."""
        return AccessSettings(
            store_failure_mode=self.tenant_store_failure_mode,  # type: ignore[arg-type]
            sync_interval_seconds=self.tenant_sync_interval_seconds,
        )

    def policy_settings(self) -> PolicySettings:
        """The autoscaling policy's settings that the operator's environment sets."""
        return PolicySettings(
            stale_seconds=self.autoscaler_stale_seconds,
            headroom_percent=self.autoscaler_headroom_percent,
            max_scale_up_factor=self.autoscaler_max_scale_up_factor,
            queue_drain_seconds=self.autoscaler_queue_drain_seconds,
            cold_start_seconds=self.autoscaler_cold_start_seconds,
            step_sigma=self.autoscaler_step_sigma,
            release_sigma=self.autoscaler_release_sigma,
            spill_bridge=self.autoscaler_spill_bridge,
        )

    @property
    def autoscaler_mode(self) -> AutoscalerMode:
        """Off, DryRun or Active, from the settings above."""
        if not self.autoscaler_enabled or not self.prometheus_url:
            return "Off"
        return "DryRun" if self.autoscaler_dry_run else "Active"

    @property
    def autoscaler_off_reason(self) -> str:
        """Why the autoscaler is off, in words (empty when it is not)."""
        if not self.autoscaler_enabled:
            return "disabled by the operator's settings (SHOAL_AUTOSCALER_ENABLED=false)"
        if not self.prometheus_url:
            return "no Prometheus configured (SHOAL_PROMETHEUS_URL is empty)"
        return ""

    @property
    def default_budget(self) -> Decimal | None:
        """The default budget as a number."""
        return Decimal(self.default_budget_per_hour) if self.default_budget_per_hour else None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        """Settings from ``SHOAL_*`` environment variables (the Helm chart sets them)."""
        env = dict(os.environ if env is None else env)
        defaults = cls()
        return cls(
            serving_image=env.get("SHOAL_SERVING_IMAGE", defaults.serving_image),
            gpu_image=env.get("SHOAL_GPU_IMAGE", defaults.gpu_image),
            ray_serve_env=_env_map(env, "SHOAL_RAY_SERVE_ENV"),
            operator_namespace=env.get("SHOAL_OPERATOR_NAMESPACE", "").strip() or None,
            kuberay_namespace=env.get("SHOAL_KUBERAY_NAMESPACE", "").strip() or None,
            fqdn_policies=_fqdn_policies(env.get("SHOAL_FQDN_POLICIES", "")),
            resync_seconds=float(env.get("SHOAL_RESYNC_SECONDS", defaults.resync_seconds)),
            periodic_rate_per_second=float(
                env.get("SHOAL_PERIODIC_RATE_PER_SECOND", defaults.periodic_rate_per_second)
            ),
            retry_seconds=float(env.get("SHOAL_RETRY_SECONDS", defaults.retry_seconds)),
            api_timeout_seconds=float(
                env.get("SHOAL_API_TIMEOUT_SECONDS", defaults.api_timeout_seconds)
            ),
            outbound_allow=_allowlist(env.get("SHOAL_OUTBOUND_ALLOW", "")),
            prometheus_url=env.get("SHOAL_PROMETHEUS_URL", defaults.prometheus_url).strip(),
            autoscaler_enabled=_flag(env, "SHOAL_AUTOSCALER_ENABLED", defaults.autoscaler_enabled),
            autoscaler_interval_seconds=float(
                env.get("SHOAL_AUTOSCALER_INTERVAL_SECONDS", defaults.autoscaler_interval_seconds)
            ),
            autoscaler_dry_run=_flag(env, "SHOAL_AUTOSCALER_DRY_RUN", defaults.autoscaler_dry_run),
            autoscaler_stale_seconds=float(
                env.get("SHOAL_AUTOSCALER_STALE_SECONDS", defaults.autoscaler_stale_seconds)
            ),
            default_budget_per_hour=_money(env, "SHOAL_DEFAULT_BUDGET_PER_HOUR"),
            autoscaler_headroom_percent=_int(
                env, "SHOAL_AUTOSCALER_HEADROOM_PERCENT", defaults.autoscaler_headroom_percent
            ),
            autoscaler_burst_window_seconds=float(
                env.get(
                    "SHOAL_AUTOSCALER_BURST_WINDOW_SECONDS",
                    defaults.autoscaler_burst_window_seconds,
                )
            ),
            autoscaler_max_scale_up_factor=float(
                env.get(
                    "SHOAL_AUTOSCALER_MAX_SCALE_UP_FACTOR", defaults.autoscaler_max_scale_up_factor
                )
            ),
            autoscaler_queue_drain_seconds=float(
                env.get(
                    "SHOAL_AUTOSCALER_QUEUE_DRAIN_SECONDS", defaults.autoscaler_queue_drain_seconds
                )
            ),
            autoscaler_cold_start_seconds=float(
                env.get(
                    "SHOAL_AUTOSCALER_COLD_START_SECONDS", defaults.autoscaler_cold_start_seconds
                )
            ),
            autoscaler_step_sigma=float(
                env.get("SHOAL_AUTOSCALER_STEP_SIGMA", defaults.autoscaler_step_sigma)
            ),
            autoscaler_release_sigma=float(
                env.get("SHOAL_AUTOSCALER_RELEASE_SIGMA", defaults.autoscaler_release_sigma)
            ),
            autoscaler_spill_bridge=float(
                env.get("SHOAL_AUTOSCALER_SPILL_BRIDGE", defaults.autoscaler_spill_bridge)
            ),
            tenant_store_failure_mode=env.get(
                "SHOAL_TENANT_STORE_FAILURE_MODE", defaults.tenant_store_failure_mode
            ).strip(),
            tenant_sync_interval_seconds=float(
                env.get("SHOAL_TENANT_SYNC_INTERVAL_SECONDS", defaults.tenant_sync_interval_seconds)
            ),
            tenant_key_resync_seconds=float(
                env.get("SHOAL_TENANT_KEY_RESYNC_SECONDS", defaults.tenant_key_resync_seconds)
            ),
            tenant_usage_interval_seconds=float(
                env.get(
                    "SHOAL_TENANT_USAGE_INTERVAL_SECONDS", defaults.tenant_usage_interval_seconds
                )
            ),
        )
