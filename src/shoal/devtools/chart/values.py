"""The values of the ``shoal`` Helm chart, as a Pydantic model.

``charts/shoal/values.yaml`` is written by hand for people (a comment on every value); this
model is written for machines: ``values.schema.json`` is generated from it (Helm rejects
values that do not fit, before rendering anything), and tests hold ``values.yaml`` to it (the
same keys, the same defaults). Change a value in three places: here, in ``values.yaml`` and in
the templates; then run ``shoal chart``.

Cross-field rules (:class:`ValuesRule`) are written once and enforced twice, as JSON Schema
``if``/``then`` (Helm) and as a Python check (this model), like the API's CEL rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shoal.api.v1alpha1.common import DNS_LABEL, ENV_NAME, MONEY, QUANTITY

# --- constrained types -------------------------------------------------------------------------

#: A namespace name (an RFC 1123 label).
Namespace = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)]
#: A Prometheus duration: "30s", "5m", "1h30m".
Duration = Annotated[str, StringConstraints(max_length=16, pattern=r"^([0-9]+(ms|s|m|h|d|w|y))+$")]
#: A Kubernetes quantity, or empty for "not set".
OptionalQuantity = Annotated[
    str, StringConstraints(max_length=32, pattern=f"^({QUANTITY.strip('^$')})?$")
]
#: Decimal USD per hour (the API's money format), or empty for "no default".
OptionalMoney = Annotated[
    str, StringConstraints(max_length=12, pattern=f"^({MONEY.strip('^$')})?$")
]
#: An http(s) URL, or empty.
OptionalHttpUrl = Annotated[
    str,
    StringConstraints(
        max_length=512,
        pattern=r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/%+=-]*)?)?$",
    ),
]
#: A label or annotation map.
StringMap = dict[str, str]
Severity = Literal["critical", "warning", "info"]

#: Upper bounds (seconds) of the serving layer's latency histograms
#: (``shoal.serving.metrics.LATENCY_BUCKETS``): an SLO threshold must be one of them, because
#: the burn-rate alert reads the share of requests below it from the ``le`` bucket.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip


# --- cross-field rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class ValuesRule:
    """A rule across fields, as JSON Schema ``if``/``then`` and as the same check in Python."""

    when: dict[str, Any]
    then: dict[str, Any]
    message: str
    check: Callable[[Any], bool]

    def to_schema(self) -> dict[str, Any]:
        return {"if": self.when, "then": self.then, "$comment": self.message}


def _add_rules(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[ValuesRule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["allOf"] = [r.to_schema() for r in rules]


class ChartModel(BaseModel):
    """Base of every values model: camelCase keys as Helm users write them, no unknown keys."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_add_rules,
    )

    rules: ClassVar[tuple[ValuesRule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        failed = [r.message for r in type(self).rules if not r.check(self)]
        if failed:
            raise ValueError("; ".join(failed))
        return self


def _is(field: str, value: Any) -> dict[str, Any]:
    """JSON Schema: ``field`` is present and equals ``value``."""
    return {"properties": {field: {"const": value}}, "required": [field]}


# --- the values --------------------------------------------------------------------------------


class Image(ChartModel):
    """A container image."""

    repository: str = Field(
        default="localhost/shoal-operator",
        min_length=1,
        max_length=255,
        description="Image repository of the operator (built from operator/Dockerfile). "
        "localhost/shoal-operator is the name `make images` gives the image it builds (tag "
        "dev), for a node it is loaded into; no registry publishes Shoal's images: push yours "
        "and name it here (docs/sre.md, Images).",
    )
    tag: str = Field(
        default="",
        max_length=128,
        pattern=r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)?$",
        description="Image tag; empty: the chart's appVersion.",
    )
    digest: str = Field(
        default="",
        pattern=r"^(sha256:[a-f0-9]{64})?$",
        description="Image digest (sha256:...); when set it pins the image and wins over tag.",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Kubernetes image pull policy."
    )


class LocalObjectReference(ChartModel):
    """A reference to an object in the release namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the object.")


class Crds(ChartModel):
    """The CustomResourceDefinitions the chart installs."""

    install: bool = Field(
        default=True,
        description="Install the shoal.dev CRDs (ModelFleet, RoutingPolicy) with the chart. "
        "Turn off when CRDs are managed elsewhere (e.g. `kubectl apply -f crds/`).",
    )
    keep: bool = Field(
        default=True,
        description="Keep the CRDs (and so every fleet) when the release is uninstalled "
        "(helm.sh/resource-policy: keep).",
    )
    kopf_peering: bool = Field(
        default=True,
        description="Install kopf's peering CRDs (kopf.dev KopfPeering, ClusterKopfPeering) "
        "when peering is on. Turn off if another kopf operator in the cluster installed them.",
    )


class Peering(ChartModel):
    """kopf peering: replicas that share a peering name run one at a time."""

    enabled: bool = Field(
        default=False,
        description="Run with kopf peering. Always on when replicaCount > 1, so that only one "
        "replica reconciles at a time while the others stand by.",
    )
    name: str = Field(
        default="",
        max_length=63,
        pattern=f"^({DNS_LABEL.strip('^$')})?$",
        description="Name of the peering object; empty: the release's full name.",
    )


class OperatorSettings(ChartModel):
    """How the operator runs: what it watches, how it logs, its ports and pacing."""

    watch_namespaces: list[Namespace] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"uniqueItems": True},
        description="Namespaces to watch; empty: all namespaces (cluster-wide).",
    )

    @field_validator("watch_namespaces")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each namespace may appear once")
        return value

    log_format: Literal["plain", "full", "json"] = Field(
        default="json", description="Log format: plain, full or json (for log pipelines)."
    )
    verbose: bool = Field(default=False, description="Debug logging.")
    metrics_port: int = Field(
        default=8080, ge=1024, le=65535, description="Port of the Prometheus /metrics endpoint."
    )
    health_port: int = Field(
        default=8081,
        ge=1024,
        le=65535,
        description="Port of the liveness endpoint (/healthz) that the probes call.",
    )
    peering: Peering = Field(default_factory=Peering, description="kopf peering.")
    resync_seconds: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="Seconds between periodic re-checks of every fleet and policy "
        "(SHOAL_RESYNC_SECONDS).",
    )
    retry_seconds: int = Field(
        default=10,
        ge=1,
        le=3600,
        description="Seconds before a fleet re-checks a missing or unfitted dependency "
        "(SHOAL_RETRY_SECONDS).",
    )
    api_timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=600,
        description="Timeout of one Kubernetes API call (SHOAL_API_TIMEOUT_SECONDS).",
    )
    outbound_allow: list[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9*.:/-]+$", max_length=253)]
    ] = Field(
        default_factory=list,
        max_length=256,
        description="Hosts (e.g. embed.example, *.svc.cluster.local) and CIDR ranges the "
        "operator may call on a RoutingPolicy's behalf (calibration URIs, embedder "
        "endpoints) (SHOAL_OUTBOUND_ALLOW); empty: any destination but link-local and cloud "
        "metadata addresses, which are always refused.",
    )


class Serving(ChartModel):
    """Images the operator puts into the Ray pods of fleets that name none."""

    image: str = Field(
        default="",
        max_length=512,
        description="Image of CPU Ray nodes (SHOAL_SERVING_IMAGE); empty: the serving image "
        "next to the operator image (shoal-serving, same registry and tag).",
    )
    gpu_image: str = Field(
        default="",
        max_length=512,
        description="Image of GPU Ray workers (SHOAL_GPU_IMAGE); empty: the serving image "
        "with the tag suffix -gpu.",
    )
    ray_serve_env: dict[Annotated[str, StringConstraints(pattern=ENV_NAME)], str] = Field(
        default_factory=dict,
        description="Environment variables for every Ray container, over the Ray Serve "
        "settings Shoal sets there (RAY_SERVE_THROUGHPUT_OPTIMIZED=1, "
        "RAY_SERVE_ENABLE_HA_PROXY=1: Ray Serve's high-throughput mode with HAProxy) "
        '(SHOAL_RAY_SERVE_ENV). {RAY_SERVE_ENABLE_HA_PROXY: "0"} goes back to Ray Serve\'s '
        "Python proxy.",
        json_schema_extra={"additionalProperties": False},
    )
    kuberay_namespace: str = Field(
        default="kuberay-system",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of KubeRay's controller (SHOAL_KUBERAY_NAMESPACE; KubeRay's "
        "chart installs it into kuberay-system): fleets' NetworkPolicies let Ray's dashboard "
        "and its job API be reached from its pods (app.kubernetes.io/name=kuberay-operator) "
        "in this namespace only, never from every namespace. The operator is admitted from "
        "the release's namespace only.",
    )
    fqdn_policies: Literal["", "cilium"] = Field(
        default="",
        description="Where a fleet's egress is Restricted, also write a policy of the CNI's "
        "own that names its external models' hosts (SHOAL_FQDN_POLICIES): cilium (a "
        "CiliumNetworkPolicy with toFQDNs, which follows the hosts' changing addresses; "
        "grants the operator ciliumnetworkpolicies). Empty: the NetworkPolicy alone, with "
        "the addresses the operator resolved.",
    )


class Autoscaler(ChartModel):
    """Shoal's fleet autoscaler inside the operator: Prometheus, pacing, budget."""

    enabled: bool = Field(
        default=True,
        description="Shoal's autoscaler (SHOAL_AUTOSCALER_ENABLED); it acts only once "
        "prometheusUrl is set. Off (or without Prometheus): Ray Serve autoscales each model "
        "within its tier's bounds.",
    )
    prometheus_url: OptionalHttpUrl = Field(
        default="",
        description="Base URL of the Prometheus that scrapes the fleets, e.g. "
        "http://prometheus-operated.monitoring.svc:9090 (SHOAL_PROMETHEUS_URL).",
    )
    interval_seconds: int = Field(
        default=15,
        ge=5,
        le=3600,
        description="Seconds between two evaluations of every fleet "
        "(SHOAL_AUTOSCALER_INTERVAL_SECONDS).",
    )
    dry_run: bool = Field(
        default=False,
        description="Decide and report (status, events, metrics) but change no replica count "
        "(SHOAL_AUTOSCALER_DRY_RUN).",
    )
    stale_seconds: int = Field(
        default=60,
        ge=10,
        le=3600,
        description="Metrics older than this are stale: the autoscaler holds a model's replicas "
        "rather than guess (SHOAL_AUTOSCALER_STALE_SECONDS).",
    )
    default_budget_per_hour: OptionalMoney = Field(
        default="",
        description='Budget in USD per hour for fleets without spec.budget, e.g. "25.00"; '
        "empty: no cap (SHOAL_DEFAULT_BUDGET_PER_HOUR).",
    )
    headroom_percent: int = Field(
        default=0,
        ge=0,
        le=400,
        description="Spare capacity kept for bursts, in percent of the gap between the "
        "busiest 30-second arrival rate of the burst window and the rate now; a tier's "
        "autoscaling.headroomPercent overrides it. 0: none; higher: steps land on warm "
        "replicas more often, at a cost (SHOAL_AUTOSCALER_HEADROOM_PERCENT).",
    )
    burst_window_seconds: int = Field(
        default=600,
        ge=60,
        le=3600,
        description="How far back the busiest arrival rate is looked for when sizing the "
        "headroom (SHOAL_AUTOSCALER_BURST_WINDOW_SECONDS).",
    )
    max_scale_up_factor: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Most one decision may multiply a model's replicas by (one more is always "
        "allowed): a bound on how far a wrong reading can throw the fleet "
        "(SHOAL_AUTOSCALER_MAX_SCALE_UP_FACTOR).",
    )
    queue_drain_seconds: int = Field(
        default=90,
        ge=5,
        le=3600,
        description="A queue asks for the capacity that drains it within this many seconds, "
        "on top of what carries the arrivals (SHOAL_AUTOSCALER_QUEUE_DRAIN_SECONDS).",
    )
    cold_start_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="How long a new replica takes to serve. While arrivals exceed what the "
        "ready replicas carry, the requests that pile up meanwhile are drained too, by "
        "replicas started at the same time; 0 counts only the queue already there "
        "(SHOAL_AUTOSCALER_COLD_START_SECONDS).",
    )
    step_sigma: float = Field(
        default=3.0,
        ge=0,
        le=10,
        description="An arrival rate over the last interval this many Poisson standard "
        "deviations above the 30-second rate is a step: the model is sized for it at once. "
        "0: off (SHOAL_AUTOSCALER_STEP_SIGMA).",
    )
    release_sigma: float = Field(
        default=2.0,
        ge=0,
        le=10,
        description="Once a burst is over, the replicas kept carry the arrival rate plus this "
        "many Poisson standard deviations of it, so that one quiet window does not release "
        "replicas the next one needs (SHOAL_AUTOSCALER_RELEASE_SIGMA).",
    )
    spill_bridge: float = Field(
        default=1.0,
        ge=0,
        le=4,
        description="Spillover's bridge: while a model's new replicas start, the model its "
        "requests spill to (the one they went to most over the burst window) is sized for "
        "this many times the requests in flight beyond what the ready replicas carry. Acts "
        "only for fleets whose RoutingPolicy has spillover on; 0: off "
        "(SHOAL_AUTOSCALER_SPILL_BRIDGE).",
    )


class Tenants(ChartModel):
    """Tenants of the fleets: the operator-wide settings of their access config."""

    store_failure_mode: Literal["share", "open", "closed"] = Field(
        default="share",
        description="What the ingress does with tenant limits while its shared usage store is "
        "unreachable: share (each ingress replica enforces its share of every limit), open "
        "(each enforces the whole limit), closed (limited tenants get 503) "
        "(SHOAL_TENANT_STORE_FAILURE_MODE).",
    )
    sync_interval_seconds: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="Seconds between two shares of an ingress replica's usage with the others "
        "(SHOAL_TENANT_SYNC_INTERVAL_SECONDS).",
    )
    key_resync_seconds: int = Field(
        default=10,
        ge=2,
        le=25,
        description="Seconds between two reads of every tenant's key Secrets; a rotated key "
        "takes effect within about this long (SHOAL_TENANT_KEY_RESYNC_SECONDS).",
    )
    usage_interval_seconds: int = Field(
        default=60,
        ge=10,
        le=3600,
        description="Seconds between two reads of every tenant's last-hour use from Prometheus "
        "into its status (SHOAL_TENANT_USAGE_INTERVAL_SECONDS).",
    )


class ServiceAccount(ChartModel):
    """The operator's ServiceAccount."""

    create: bool = Field(default=True, description="Create the ServiceAccount.")
    name: str = Field(
        default="",
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        description="Its name; empty: the release's full name.",
    )
    annotations: StringMap = Field(
        default_factory=dict,
        description="Annotations, e.g. for workload identity (eks.amazonaws.com/role-arn).",
    )


class Rbac(ChartModel):
    """Least-privilege RBAC for the operator."""

    create: bool = Field(default=True, description="Create the (Cluster)Roles and bindings.")
    namespaced: bool = Field(
        default=False,
        description="Namespace-scoped mode: a Role and RoleBinding in each watched namespace "
        "instead of a ClusterRole. Needs operator.watchNamespaces.",
    )
    cluster_discovery: bool = Field(
        default=True,
        description="In namespace-scoped mode, also grant cluster-wide list/watch of "
        "namespaces and CRDs (read-only), so the operator notices CRDs installed after it "
        "starts (KubeRay's, say). Off: strictly namespaced; restart the operator after "
        "installing CRDs.",
    )
    feedback_keys: bool = Field(
        default=True,
        description="Grant create (only) on Secrets in the watched namespaces, so the operator "
        "makes each fleet's completion-id signing key (Secret <fleet>-feedback-key, a random "
        "key, created where none exists and never read back) and every ingress replica "
        "attributes client feedback alike. Off: create that Secret yourself (key: key), or "
        "each replica signs with a key of its own and feedback reaches only the replica "
        "that answered.",
    )
    embedder_secrets: bool = Field(
        default=False,
        description="Grant get on Secrets in the watched namespaces, so the operator can read "
        "the API key a RoutingPolicy's openai embedder names (embedder.apiKeySecretRef) to fit "
        "its router, where the Secret's owner allows it (label shoal.dev/embedder-key=true, "
        "hosts in the annotation shoal.dev/allowed-hosts). Off: such policies report "
        "Fitted=False, reason Forbidden.",
    )
    tenant_secrets: bool = Field(
        default=False,
        description="Grant get on Secrets in the watched namespaces, so the operator can read "
        "the API keys Tenants name (spec.apiKeys), where the Secret's owner allows it (label "
        "shoal.dev/api-key=true); only digests leave the operator. Off: Tenants report "
        "Ready=False, reason Forbidden.",
    )


class ResourceAmounts(ChartModel):
    """CPU and memory; empty means not set."""

    cpu: OptionalQuantity = Field(default="", description='CPU, e.g. "250m".')
    memory: OptionalQuantity = Field(default="", description='Memory, e.g. "512Mi".')


class Resources(ChartModel):
    """Resource requests and limits of the operator container."""

    requests: ResourceAmounts = Field(
        default_factory=lambda: ResourceAmounts(cpu="100m", memory="256Mi"),
        description="What the scheduler reserves.",
    )
    limits: ResourceAmounts = Field(
        default_factory=lambda: ResourceAmounts(memory="1Gi"),
        description="The most the container may use (router fits embed calibration data).",
    )


class PodSecurity(ChartModel):
    """Identity of the operator's processes. The chart always runs them as non-root, with a
    read-only root filesystem, no privilege escalation and no capabilities."""

    run_as_user: int = Field(default=65532, ge=1, description="User id (never 0).")
    run_as_group: int = Field(default=65532, ge=1, description="Group id (never 0).")
    fs_group: int = Field(default=65532, ge=1, description="Group owning mounted volumes.")


class ServiceMonitor(ChartModel):
    """A prometheus-operator ServiceMonitor for the operator's /metrics."""

    enabled: bool = Field(default=False, description="Create the ServiceMonitor.")
    interval: Duration = Field(default="30s", description="Scrape interval.")
    scrape_timeout: Duration = Field(default="10s", description="Scrape timeout.")
    labels: StringMap = Field(
        default_factory=dict,
        description="Extra labels, e.g. the release label your Prometheus selects monitors by.",
    )


class PodMonitor(ChartModel):
    """A prometheus-operator PodMonitor for the Ray pods of every fleet (serving metrics)."""

    enabled: bool = Field(default=False, description="Create the PodMonitor.")
    interval: Duration = Field(
        default="5s",
        description="Scrape interval. The autoscaler reacts no faster than this, and its step "
        "detection (autoscaler.stepSigma) needs at least two scrapes an evaluation interval.",
    )
    labels: StringMap = Field(default_factory=dict, description="Extra labels.")
    all_namespaces: bool = Field(
        default=True,
        description="Scrape fleets in every namespace; false: only operator.watchNamespaces "
        "(or the release namespace when that is empty).",
    )


class FleetNotReadyAlert(ChartModel):
    """ShoalFleetNotReady: a fleet's Ready condition has been False."""

    enabled: bool = Field(default=True, description="Create the alert.")
    for_: Duration = Field(default="15m", alias="for", description="How long before it fires.")
    severity: Severity = Field(default="warning", description="Severity label.")


class SloBurnAlert(ChartModel):
    """ShoalTTFTBudgetBurn: the fleet spends its time-to-first-token error budget too fast."""

    enabled: bool = Field(default=True, description="Create the fast and slow burn alerts.")
    objective: float = Field(
        default=0.99,
        ge=0.5,
        lt=1,
        description="Share of requests that must get their first token within the threshold.",
    )
    ttft_threshold_seconds: float = Field(
        default=1.0,
        json_schema_extra={"enum": list(LATENCY_BUCKETS)},
        description="TTFT threshold in seconds; one of the serving histogram's buckets.",
    )

    @field_validator("ttft_threshold_seconds")
    @classmethod
    def _a_bucket(cls, value: float) -> float:
        if value not in LATENCY_BUCKETS:
            raise ValueError(f"must be one of the latency buckets {list(LATENCY_BUCKETS)}")
        return value

    severity: Severity = Field(
        default="critical",
        description="Severity of the fast burn (14.4x over 1h and 5m); the slow burn (6x over "
        "6h and 30m) is always a warning.",
    )


class BudgetAlert(ChartModel):
    """ShoalFleetBudgetNearCap: a fleet's cost per hour is close to its budget."""

    enabled: bool = Field(default=True, description="Create the alert.")
    ratio: float = Field(
        default=0.9, gt=0, le=1, description="Fires at this share of the budget (0.9 = 90%)."
    )
    for_: Duration = Field(default="15m", alias="for", description="How long before it fires.")
    severity: Severity = Field(default="warning", description="Severity label.")


class FallbackAlert(ChartModel):
    """ShoalRouterFallbackSpike: many requests fall back from the model the router chose."""

    enabled: bool = Field(default=True, description="Create the alert.")
    ratio: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Fires when fallbacks per answered request exceed this (0.05 = 5%).",
    )
    min_requests_per_second: float = Field(
        default=0.1, ge=0, description="Ignore fleets with less traffic than this."
    )
    for_: Duration = Field(default="10m", alias="for", description="How long before it fires.")
    severity: Severity = Field(default="warning", description="Severity label.")


class ReconcileErrorsAlert(ChartModel):
    """ShoalOperatorReconcileErrors: reconciles end in unexpected errors."""

    enabled: bool = Field(default=True, description="Create the alert.")
    for_: Duration = Field(default="15m", alias="for", description="How long before it fires.")
    severity: Severity = Field(default="warning", description="Severity label.")


class OperatorDownAlert(ChartModel):
    """ShoalOperatorDown: Prometheus cannot scrape the operator (needs the ServiceMonitor)."""

    enabled: bool = Field(default=True, description="Create the alert.")
    for_: Duration = Field(default="5m", alias="for", description="How long before it fires.")
    severity: Severity = Field(default="critical", description="Severity label.")


class Alerts(ChartModel):
    """The alerts of the PrometheusRule; each can be turned off and tuned."""

    fleet_not_ready: FleetNotReadyAlert = Field(
        default_factory=FleetNotReadyAlert, description="A fleet is not Ready."
    )
    slo_burn: SloBurnAlert = Field(
        default_factory=SloBurnAlert, description="Time-to-first-token SLO burn rate."
    )
    budget_near_cap: BudgetAlert = Field(
        default_factory=BudgetAlert, description="Cost per hour near the fleet's budget."
    )
    fallback_spike: FallbackAlert = Field(
        default_factory=FallbackAlert, description="Router fallbacks spike."
    )
    reconcile_errors: ReconcileErrorsAlert = Field(
        default_factory=ReconcileErrorsAlert, description="Operator reconcile errors."
    )
    operator_down: OperatorDownAlert = Field(
        default_factory=OperatorDownAlert, description="The operator is not scraped."
    )


class PrometheusRule(ChartModel):
    """A prometheus-operator PrometheusRule with Shoal's alerts."""

    enabled: bool = Field(default=False, description="Create the PrometheusRule.")
    labels: StringMap = Field(default_factory=dict, description="Extra labels.")
    alerts: Alerts = Field(default_factory=Alerts, description="The alerts.")


class Dashboards(ChartModel):
    """The Grafana dashboard, in a ConfigMap for Grafana's dashboard sidecar."""

    enabled: bool = Field(default=False, description="Create the dashboard ConfigMap.")
    namespace: str = Field(
        default="",
        max_length=63,
        pattern=f"^({DNS_LABEL.strip('^$')})?$",
        description="Namespace of the ConfigMap; empty: the release namespace.",
    )
    labels: StringMap = Field(
        default_factory=lambda: {"grafana_dashboard": "1"},
        description="Labels the sidecar looks for.",
    )
    annotations: StringMap = Field(
        default_factory=dict,
        description="Annotations, e.g. grafana_folder for the sidecar's folder support.",
    )


class KsmServiceAccount(ChartModel):
    """The ServiceAccount kube-state-metrics runs as."""

    name: str = Field(
        default="",
        max_length=253,
        description="Its name; empty: bind nothing (grant the ClusterRole yourself).",
    )
    namespace: str = Field(
        default="",
        max_length=63,
        pattern=f"^({DNS_LABEL.strip('^$')})?$",
        description="Its namespace; empty: the release namespace.",
    )


class KubeStateMetrics(ChartModel):
    """Fleet state as metrics through kube-state-metrics' custom resource state feature."""

    enabled: bool = Field(
        default=False,
        description="Create a ConfigMap with kube-state-metrics' custom resource state "
        "config for ModelFleets (readiness, replicas per model and tier, cost, budget) and "
        "a ClusterRole that lets kube-state-metrics read fleets.",
    )
    service_account: KsmServiceAccount = Field(
        default_factory=KsmServiceAccount,
        description="Bind the ClusterRole to this ServiceAccount.",
    )


class Monitoring(ChartModel):
    """Prometheus and Grafana integration."""

    service_monitor: ServiceMonitor = Field(
        default_factory=ServiceMonitor, description="Scrape the operator."
    )
    pod_monitor: PodMonitor = Field(default_factory=PodMonitor, description="Scrape the fleets.")
    prometheus_rule: PrometheusRule = Field(default_factory=PrometheusRule, description="Alerts.")
    dashboards: Dashboards = Field(default_factory=Dashboards, description="Grafana dashboard.")
    kube_state_metrics: KubeStateMetrics = Field(
        default_factory=KubeStateMetrics, description="Fleet state metrics."
    )


class Values(ChartModel):
    """Everything ``helm install shoal charts/shoal -f my-values.yaml`` accepts."""

    name_override: str = Field(
        default="", max_length=63, description="Replaces the chart name in object names."
    )
    fullname_override: str = Field(
        default="", max_length=63, description="Replaces the full name of every object."
    )
    replica_count: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Operator replicas; more than one turns peering on (one active, the "
        "others stand by).",
    )
    image: Image = Field(default_factory=Image, description="The operator image.")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets to pull the images with."
    )
    crds: Crds = Field(default_factory=Crds, description="CRDs.")
    operator: OperatorSettings = Field(
        default_factory=OperatorSettings, description="Operator settings."
    )
    serving: Serving = Field(default_factory=Serving, description="Fleet images.")
    autoscaler: Autoscaler = Field(default_factory=Autoscaler, description="The autoscaler.")
    tenants: Tenants = Field(default_factory=Tenants, description="Tenants of the fleets.")
    service_account: ServiceAccount = Field(
        default_factory=ServiceAccount, description="The ServiceAccount."
    )
    rbac: Rbac = Field(default_factory=Rbac, description="RBAC.")
    resources: Resources = Field(default_factory=Resources, description="Container resources.")
    pod_security: PodSecurity = Field(
        default_factory=PodSecurity, description="Process identity (always non-root)."
    )
    pod_annotations: StringMap = Field(default_factory=dict, description="Pod annotations.")
    pod_labels: StringMap = Field(default_factory=dict, description="Extra pod labels.")
    priority_class_name: str = Field(
        default="", max_length=253, description="PriorityClass of the operator pods."
    )
    node_selector: StringMap = Field(default_factory=dict, description="Node selector.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Tolerations (Kubernetes' own shape)."
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict, description="Affinity (Kubernetes' own shape)."
    )
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Monitoring.")

    rules: ClassVar[tuple[ValuesRule, ...]] = (
        ValuesRule(
            when={"properties": {"rbac": _is("namespaced", True)}, "required": ["rbac"]},
            then={"properties": {"operator": {"properties": {"watchNamespaces": {"minItems": 1}}}}},
            message="rbac.namespaced needs operator.watchNamespaces",
            check=lambda v: not v.rbac.namespaced or bool(v.operator.watch_namespaces),
        ),
    )
