"""``RoutingPolicy``: how a fleet's router picks a model for each query.

The default strategy is ``cluster``: embed the query, find its nearest clusters (k-means over
calibration prompts with per-model quality and cost), score each model per cluster as
``alpha * quality + (1 - alpha) * (1 - cost)`` and rank. ``static`` ranks models in a fixed
order. The operator fits the router artifact from ``calibration`` and reports it in status.
``cascade`` turns either ranking into a cascade: the ranked list's first model answers, a
confidence signal on its answer decides whether it is kept or the next model is called.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from shoal.api.v1alpha1.common import (
    ApiModel,
    Condition,
    Fraction,
    HttpUrl,
    Money,
    Name,
    ObjectMeta,
    ObjectName,
    PositiveDecimal,
    Rule,
)

Strategy = Literal["cluster", "static"]
EmbedderType = Literal["minilm", "multilingual-e5", "openai"]
#: A percentage in [0, 100] with at most two places: "0", "1.0", "2.5", "100".
PERCENT = r"^(100(\.0{1,2})?|[1-9]?[0-9](\.[0-9]{1,2})?)$"
#: A decimal in [0, 10] with at most two places: "0", "1", "1.5".
SMALL_DECIMAL = r"^(10(\.0{1,2})?|[0-9](\.[0-9]{1,2})?)$"
FeedbackMode = Literal["Apply", "Observe"]
#: A model of the fleet, or a LoRA adapter of one as clients address it: ``<model>:<adapter>``.
MODEL_REF = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
ModelRef = Annotated[str, StringConstraints(min_length=1, max_length=81, pattern=MODEL_REF)]
CascadeSignal = Literal["LogprobMean", "LogprobMin", "LogprobMargin"]
CascadeStreaming = Literal["Replay", "FirstModel"]
CascadeOnBudget = Literal["ReturnCheapAnswer", "Refuse"]
#: A signed decimal in [-100, 100] with at most four places: "-0.8", "0", "1.25".
SIGNED_DECIMAL = r"^-?(100(\.0{1,4})?|[1-9]?[0-9](\.[0-9]{1,4})?)$"
#: Seconds, a decimal in (0, 10000) with at most three places: "0.5", "30", "120".
SECONDS = r"^(0\.[0-9]{0,2}[1-9]|[1-9][0-9]{0,3}(\.[0-9]{1,3})?)$"
CALIBRATION_URI = r"^((s3|gs)://[a-z0-9][a-z0-9.-]*[a-z0-9]|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)/[A-Za-z0-9._~/%+=-]+$"


class SecretKeyRef(ApiModel):
    """A key of a Secret in the policy's namespace."""

    name: ObjectName = Field(description="Secret name.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret."
    )


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the policy's namespace."""

    name: ObjectName = Field(description="ConfigMap name.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the ConfigMap holding calibration data (JSONL, RouterDC JSON or "
        "RouterBench CSV).",
    )


class EmbedderSpec(ApiModel):
    """Which text embedder places queries among the clusters."""

    type: EmbedderType = Field(
        default="minilm",
        description="minilm: ONNX all-MiniLM-L6-v2 in the router process (English); "
        "multilingual-e5: ONNX multilingual-e5-small in the router process; openai: any "
        "OpenAI-compatible /v1/embeddings endpoint.",
    )
    endpoint: HttpUrl | None = Field(
        default=None, description="Base URL of the embeddings endpoint (type openai only)."
    )
    model: str | None = Field(
        default=None,
        max_length=253,
        description="Embedding model name sent to the endpoint (type openai only).",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the endpoint's API key (type openai only)."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.type != 'openai' || (has(self.endpoint) && has(self.model))",
            message="an openai embedder needs endpoint and model",
            check=lambda e: e.type != "openai" or (e.endpoint is not None and e.model is not None),
            field_path=".endpoint",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="self.type == 'openai' || (!has(self.endpoint) && !has(self.model) "
            "&& !has(self.apiKeySecretRef))",
            message="endpoint, model and apiKeySecretRef apply only to the openai embedder",
            check=lambda e: (
                e.type == "openai"
                or (e.endpoint is None and e.model is None and e.api_key_secret_ref is None)
            ),
            field_path=".type",
            reason="FieldValueForbidden",
        ),
    )


class CalibrationSource(ApiModel):
    """Where the calibration data (prompts with per-model quality and cost) comes from."""

    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="A ConfigMap key in the policy's namespace."
    )
    uri: str | None = Field(
        default=None,
        max_length=1024,
        pattern=CALIBRATION_URI,
        description="An s3://, gs:// or http(s):// location.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.configMapRef) != has(self.uri)",
            message="set exactly one of configMapRef and uri",
            check=lambda c: (c.config_map_ref is None) != (c.uri is None),
        ),
    )


class ExplorationSpec(ApiModel):
    """Safe exploration: a small share of routed requests goes to a model other than the
    router's first choice, among those whose score is within a margin of it, so that client
    feedback reaches models the router would not pick. Off unless ``percent`` > 0."""

    percent: int = Field(
        default=0,
        ge=0,
        le=20,
        description="Largest share of routed requests (percent) that may be explored.",
    )
    quality_margin: Fraction = Field(
        default="0.05",
        description="Only models whose blended score is within this of the first choice's "
        "(scores in [0, 1]) may be explored.",
    )
    max_cost_per_hour: Money | None = Field(
        default=None,
        description="USD per hour that explored requests may cost at most (estimated from "
        "each model's recent cost per request); none: only percent caps it.",
    )


class FeedbackSpec(ApiModel):
    """Refit the router from client feedback (``POST /v1/feedback`` on the fleets' answers).

    On an interval the operator reads the feedback counts of every fleet that uses the policy
    from Prometheus, blends them into each cluster's per-model quality (a posterior whose
    prior is the calibration table, worth ``priorWeight`` feedback events) and writes a new
    artifact version, unless that would make the router worse on the calibration set by more
    than ``maxCalibrationRegressionPercent`` points, or the feedback does not show that it
    routes better by ``minImprovementPercent`` (then the refit is kept in shadow and
    reported). ``mode: Observe`` computes and reports every refit without applying it."""

    enabled: bool = Field(default=False, description="Refit the router from feedback.")
    prior_weight: int = Field(
        default=8,
        ge=0,
        le=1_000_000,
        description="Feedback events the calibration value of a cluster and model is worth: "
        "a cell with this many events weighs feedback and calibration alike.",
    )
    refit_interval_seconds: int = Field(
        default=600,
        ge=30,
        le=86_400,
        description="Seconds between two refits (at least 30).",
    )
    min_events: int = Field(
        default=100,
        ge=1,
        le=1_000_000_000,
        description="Feedback events needed (all fleets of the policy together) before a refit.",
    )
    max_calibration_regression_percent: Annotated[
        str, StringConstraints(max_length=6, pattern=PERCENT)
    ] = Field(
        default="1.0",
        description="A refit that scores more than this many points (percent) below the "
        "calibration fit on the calibration set is refused (decimal in [0, 100]).",
    )
    mode: FeedbackMode = Field(
        default="Apply",
        description="Apply: adopt refits that pass the checks. Observe: compute and report "
        "what each refit would change (status.shadowRefit, the RouterRefit condition) and "
        "never apply it.",
    )
    pessimism: Annotated[str, StringConstraints(max_length=5, pattern=SMALL_DECIMAL)] = Field(
        default="1",
        description="Lower-confidence-bound weight of the refit tables (decimal in [0, 10]): "
        "a model the feedback has scored keeps this many posterior standard deviations of "
        "certainty over one only the calibration data describes; 0 uses posterior means.",
    )
    min_improvement_percent: Annotated[str, StringConstraints(max_length=6, pattern=PERCENT)] = (
        Field(
            default="0",
            description="A refit that changes a cluster's choice is adopted only when the lower "
            "95% confidence bound of its estimated accuracy change, from the feedback, exceeds "
            "this many points (decimal in [0, 100]); otherwise it is kept in shadow.",
        )
    )


def _seconds(value: str | None) -> float | None:
    return None if value is None else float(value)


class CascadeSpec(ApiModel):
    """A cascade over the ranked models: the ranking's first model answers; a confidence
    signal on its answer (after a structural check of tool calls and JSON answers) decides
    whether it is kept or the next ranked model is called, within a chain length, a cost
    cap, the tenant's budget and two deadlines. Thresholds come per cluster from the router
    artifact's cascade plan (``shoal router fit``); ``threshold`` applies where the artifact
    carries none (and with the static strategy)."""

    signal: CascadeSignal = Field(
        default="LogprobMean",
        description="Confidence of an answer from its token log-probabilities: LogprobMean "
        "(mean over the answer's tokens), LogprobMin (the least likely token), LogprobMargin "
        "(mean gap between the top two candidates of each token).",
    )
    threshold: Annotated[str, StringConstraints(max_length=9, pattern=SIGNED_DECIMAL)] = Field(
        default="-1.0",
        description="Accept an answer whose confidence is at or above this (a decimal in "
        "[-100, 100]; at most 0 for LogprobMean and LogprobMin, at least 0 for "
        "LogprobMargin), where the router artifact carries no cascade plan.",
    )
    max_chain: int = Field(
        default=2,
        ge=2,
        le=8,
        description="Most models whose answers one request may wait for, the first included "
        "(a model that fails is passed over without counting; the voters of a fitted "
        "agreement or verifier plan are not counted either).",
    )
    max_cost_per_request: Money | None = Field(
        default=None,
        description="USD one request's attempts may cost together (each model estimated from "
        "its recent cost per request): an escalation that would go over it is not made and "
        "the last answer is kept. None: only maxChain caps it.",
    )
    on_budget_exhausted: CascadeOnBudget = Field(
        default="ReturnCheapAnswer",
        description="When a tenant's budget or token limit has no room left for the "
        "escalation: ReturnCheapAnswer keeps the answer in hand (marked in "
        "x-shoal-cascade-stopped); Refuse answers 429 insufficient_quota.",
    )
    streaming: CascadeStreaming = Field(
        default="Replay",
        description="Streaming requests: Replay waits for the verified answer and sends it as "
        "a stream; FirstModel streams the first model's answer as it comes, without a "
        "cascade. A tenant's routing.cascadeStreaming overrides it.",
    )
    stage_first_token_seconds: (
        Annotated[str, StringConstraints(max_length=9, pattern=SECONDS)] | None
    ) = Field(
        default=None,
        description="Seconds each model of the chain has for its first token; a model over it "
        "counts as failed and the next is called (decimal in (0, 10000)). None: the fleet's "
        "first-token timeout.",
    )
    chain_timeout_seconds: (
        Annotated[str, StringConstraints(max_length=9, pattern=SECONDS)] | None
    ) = Field(
        default=None,
        description="Seconds the whole chain may take: no model is called past it, and the "
        "best answer in hand is returned (decimal in (0, 10000)). None: the fleet's request "
        "timeout.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.signal == 'LogprobMargin' || double(self.threshold) <= 0.0",
            message="cascade.threshold of a log-probability signal (LogprobMean, LogprobMin) "
            "must be at most 0",
            check=lambda c: c.signal == "LogprobMargin" or float(c.threshold) <= 0.0,
            field_path=".threshold",
        ),
        Rule(
            cel="self.signal != 'LogprobMargin' || double(self.threshold) >= 0.0",
            message="cascade.threshold of the LogprobMargin signal must be at least 0",
            check=lambda c: c.signal != "LogprobMargin" or float(c.threshold) >= 0.0,
            field_path=".threshold",
        ),
        Rule(
            cel="!has(self.stageFirstTokenSeconds) || !has(self.chainTimeoutSeconds) "
            "|| double(self.stageFirstTokenSeconds) <= double(self.chainTimeoutSeconds)",
            message="cascade.stageFirstTokenSeconds may not exceed cascade.chainTimeoutSeconds",
            check=lambda c: (
                c.stage_first_token_seconds is None
                or c.chain_timeout_seconds is None
                or float(c.stage_first_token_seconds) <= float(c.chain_timeout_seconds)
            ),
            field_path=".stageFirstTokenSeconds",
        ),
    )

    @property
    def stage_seconds(self) -> float | None:
        return _seconds(self.stage_first_token_seconds)

    @property
    def chain_seconds(self) -> float | None:
        return _seconds(self.chain_timeout_seconds)


class SpilloverSpec(ApiModel):
    """SLO-aware spillover: while the router's first choice would keep a request waiting
    past its tier's latency objective (its queue, its replicas still starting), send the
    request to the best-ranked capable model whose estimated wait fits its own objective and
    whose quality for the query's cluster is at most ``maxQualityDrop`` lower. Spilled
    requests stay demand for the first choice (the autoscaler sizes it for them)."""

    enabled: bool = Field(default=False, description="Spill requests over while replicas start.")
    max_quality_drop: Fraction = Field(
        default="0.10",
        description="Largest quality drop allowed, in the router's per-cluster quality units "
        "(the calibration scores, in [0, 1]): a model scored more than this below the first "
        "choice for the query's cluster is never spilled to.",
    )
    slo_share: Fraction = Field(
        default="1.0",
        description="Share of a tier's TTFT objective an estimated time to first token may "
        "fill and still count as fitting, for the first choice and for the model spilled "
        "to (decimal in [0, 1]; 1.0: the objective itself; lower spills earlier, before the "
        "first choice's queue is long, and keeps a margin for the estimate's error).",
    )


class RoutingPolicySpec(ApiModel):
    """Desired routing behaviour."""

    strategy: Strategy = Field(
        default="cluster",
        description="cluster: learned per-cluster quality/cost ranking; static: fixed order.",
    )
    embedder: EmbedderSpec = Field(
        default_factory=EmbedderSpec,
        description="Text embedder of the cluster strategy.",
        json_schema_extra={"default": {}},
    )
    clusters: int = Field(default=16, ge=1, le=256, description="Number of k-means clusters.")
    top_p: int = Field(
        default=3, ge=1, le=16, description="Nearest clusters blended for each query."
    )
    temperature: PositiveDecimal = Field(
        default="0.1",
        description="Softmax temperature over cluster similarities when blending (decimal > 0).",
    )
    alpha: Fraction = Field(
        default="0.7",
        description="Quality weight in [0, 1]: 1 picks the best model regardless of cost, "
        "0 the cheapest.",
    )
    calibration: CalibrationSource | None = Field(
        default=None, description="Calibration data the router is fitted on (cluster strategy)."
    )
    seed: int = Field(
        default=0, ge=0, le=2_147_483_647, description="Seed of the k-means fit (deterministic)."
    )
    static_order: list[ModelRef] = Field(
        default_factory=list,
        max_length=64,
        description="Model names in preference order (static strategy); a LoRA adapter as "
        "<model>:<adapter>.",
    )
    fallback_model: Name | None = Field(
        default=None,
        description="Model tried last when every ranked model fails or is overloaded.",
    )
    allow_request_overrides: bool = Field(
        default=False,
        description="Let callers lower or raise alpha per request (x-shoal-alpha header).",
    )
    exploration: ExplorationSpec | None = Field(
        default=None,
        description="Send a capped share of requests to near-best models, for feedback "
        "(cluster strategy; off by default).",
    )
    feedback: FeedbackSpec | None = Field(
        default=None,
        description="Refit the router's quality tables from client feedback (cluster "
        "strategy; off by default).",
    )
    cascade: CascadeSpec | None = Field(
        default=None,
        description="Answer with the ranking's first model and escalate along the ranking "
        "when its answer's confidence is under the threshold (off by default).",
    )

    spillover: SpilloverSpec | None = Field(
        default=None,
        description="Send a request to the next-best model while its first choice would "
        "break its latency objective (cluster strategy; off by default).",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.topP <= self.clusters",
            message="topP may not exceed clusters",
            check=lambda s: s.top_p <= s.clusters,
            field_path=".topP",
        ),
        Rule(
            cel="self.strategy != 'cluster' || has(self.calibration)",
            message="the cluster strategy needs calibration data",
            check=lambda s: s.strategy != "cluster" or s.calibration is not None,
            field_path=".calibration",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="self.strategy != 'static' "
            "|| (has(self.staticOrder) && size(self.staticOrder) > 0)",
            message="the static strategy needs staticOrder",
            check=lambda s: s.strategy != "static" or len(s.static_order) > 0,
            field_path=".staticOrder",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="self.strategy == 'cluster' || !has(self.feedback) || !self.feedback.enabled",
            message="feedback.enabled needs the cluster strategy (a static order has no "
            "quality tables to refit)",
            check=lambda s: s.strategy == "cluster" or s.feedback is None or not s.feedback.enabled,
            field_path=".feedback.enabled",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.cascade) || self.strategy != 'static' "
            "|| (has(self.staticOrder) && size(self.staticOrder) >= 2)",
            message="a cascade with the static strategy needs at least two models in staticOrder",
            check=lambda s: s.cascade is None or s.strategy != "static" or len(s.static_order) >= 2,
            field_path=".cascade",
        ),
        Rule(
            cel="self.strategy == 'cluster' || !has(self.spillover) || !self.spillover.enabled",
            message="spillover.enabled needs the cluster strategy (a static order has no "
            "quality tables to bound the quality drop)",
            check=lambda s: (
                s.strategy == "cluster" or s.spillover is None or not s.spillover.enabled
            ),
            field_path=".spillover.enabled",
            reason="FieldValueForbidden",
        ),
    )


class RouterArtifactStatus(ApiModel):
    """The fitted router artifact the policy's fleets serve."""

    config_map: str = Field(description="ConfigMap holding the artifact.")
    checksum: str = Field(description="sha256 of the artifact.")
    format_version: int = Field(ge=1, description="Artifact format version.")
    fitted_at: datetime = Field(description="When it was fitted.")
    samples: int = Field(ge=0, description="Calibration samples it was fitted on.")
    clusters: int = Field(ge=0, description="Clusters in the artifact.")
    models: list[str] = Field(default_factory=list, description="Models it knows about.")
    version: int = Field(
        default=1, ge=1, description="Artifact version: 1 when fitted, one more per refit."
    )
    refit_at: datetime | None = Field(
        default=None, description="When it was refit from feedback (none: as fitted)."
    )


class ShadowRefitStatus(ApiModel):
    """A refit computed from feedback and not applied: what it would have changed."""

    events: int = Field(ge=0, description="Feedback events it was computed from.")
    estimated_change_percent: str = Field(
        description='Estimated change of accuracy in points, traffic-weighted (e.g. "-0.42").'
    )
    lower_bound_percent: str = Field(
        description="Lower 95% confidence bound of that change, in points."
    )
    clusters_changed: int = Field(ge=0, description="Clusters whose first choice would change.")
    traffic_changed_percent: str = Field(
        description="Share of the feedback traffic in those clusters, in percent."
    )
    reason: str = Field(description="Why it was not applied: Shadow or Observing.")
    guard: str | None = Field(
        default=None,
        description="What judged it: HeldOut (off-policy estimate on held-out logged "
        "feedback) or Counts (the feedback counts, when no held-out logged feedback exists).",
    )
    at: datetime = Field(description="When it was computed.")


class RoutingPolicyStatus(ApiModel):
    """Observed state of a policy, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Fitted and (with feedback enabled) RouterRefit conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    artifact: RouterArtifactStatus | None = Field(
        default=None, description="The current router artifact."
    )
    router_artifact_version: int | None = Field(
        default=None,
        ge=1,
        description="Version of the router artifact in use: 1 when fitted from calibration "
        "data, one more at every accepted refit from feedback.",
    )
    last_refit_time: datetime | None = Field(
        default=None, description="When the router was last refit from feedback."
    )
    feedback_events: int | None = Field(
        default=None,
        ge=0,
        description="Feedback events counted for the router's clusters at the last refit "
        "attempt (every fleet of the policy together).",
    )
    shadow_refit: ShadowRefitStatus | None = Field(
        default=None,
        description="The last refit kept in shadow (not applied) and what it would change.",
    )


class RoutingPolicy(ApiModel):
    """How a fleet's router picks the model for each query."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    KIND: ClassVar[str] = "RoutingPolicy"
    PLURAL: ClassVar[str] = "routingpolicies"

    api_version: Literal["shoal.dev/v1alpha1"] = "shoal.dev/v1alpha1"
    kind: Literal["RoutingPolicy"] = "RoutingPolicy"
    metadata: ObjectMeta
    spec: RoutingPolicySpec
    status: RoutingPolicyStatus | None = None
