"""The objects a fleet should have: a KubeRay RayService, a router ConfigMap, a Service, a
NetworkPolicy, a PodDisruptionBudget and, when the fleet names a Gateway, an HTTPRoute.

``desired_children`` is a pure function: same fleet, policy, artifact and settings give the
same objects, byte for byte (the RayService's ``serveConfigV2`` is YAML with sorted keys).
Every child carries an ownerReference to its fleet and the fleet's labels.

The RayService holds one Ray Serve application built by ``shoal.serving.app:build_app`` from
:class:`~shoal.contract.BuildArgs`; its deployments (the "router" ingress and one
``model-<name>`` per model) are named and sized by :mod:`shoal.contract`, so what the
operator renders and what the builder builds agree. Who may call the fleet (its tenants' key
digests and limits, an :class:`~shoal.contract.tenants.AccessConfig`) is the ingress
deployment's ``user_config``, outside the builder's args, so that onboarding a team or
rotating a key changes that entry alone and Ray Serve applies it in place. Its pods are hardened by
:mod:`shoal.planning.security`; who may reach them is :mod:`shoal.planning.network`'s.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml
from pydantic import ValidationError

from shoal import __version__
from shoal.api.v1alpha1 import API_VERSION, ModelFleet, RoutingPolicy
from shoal.api.v1alpha1.common import parse_quantity
from shoal.api.v1alpha1.fleet import ModelSpec, Resources
from shoal.contract import (
    EMBEDDER_API_KEY_ENV,
    FEEDBACK_KEY_FILE_ENV,
    PVC_MOUNT_ROOT,
    BuildArgs,
    ModelDeploymentPlan,
    deployment_plans,
    ray_serve_env,
    serve_application,
)
from shoal.contract.tenants import AccessConfig
from shoal.contract.variants import extra_sources
from shoal.planning import names, security
from shoal.planning.external import mount_model_keys
from shoal.planning.lora import mount_lora_credentials
from shoal.planning.network import (
    Peers,
    desired_fqdn_policy,
    desired_network_policy,
    desired_pod_disruption_budget,
)

RAY_API_VERSION = "ray.io/v1"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
#: Shoal's serving images (serving/Dockerfile), as the chart names them by default (the name
#: `make images` builds, loaded into a node; a registry's through the chart's values): Ray with
#: Shoal's Ray Serve app in it. A stock Ray image cannot import ``shoal.serving.app``.
DEFAULT_SERVING_IMAGE = f"localhost/shoal-serving:{__version__}"
DEFAULT_GPU_IMAGE = f"{DEFAULT_SERVING_IMAGE}-gpu"
DEFAULT_HEAD = Resources(cpu="2", memory="8Gi")
DEFAULT_CPU_WORKER = Resources(cpu="4", memory="16Gi")
GPU_RESOURCE = "nvidia.com/gpu"
#: Ports of the head container, under KubeRay's names. KubeRay builds the head Service from
#: these alone once any is declared: without "gcs-server" workers cannot join, without
#: "dashboard" KubeRay cannot submit serveConfigV2 ("dashboard port is not found").
HEAD_PORTS = (
    {"name": "gcs-server", "containerPort": 6379},
    {"name": "dashboard", "containerPort": 8265},
    {"name": "client", "containerPort": 10001},
    {"name": "serve", "containerPort": names.SERVE_PORT},
    {"name": "metrics", "containerPort": 8080},
)


#: libyaml's emitter where PyYAML has it (its wheels do), the same output as PyYAML's own in a
#: fifth of the time: a 20-model fleet's serveConfigV2 took 13 ms in pure Python, a third of
#: the operator's CPU while a thousand fleets converged.
_YAML_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class PlanError(ValueError):
    """The fleet and policy cannot be turned into a working RayService (a spec problem)."""


@dataclass(frozen=True)
class RouterArtifact:
    """A fitted router artifact, as the policy stores it."""

    checksum: str
    data: bytes


@dataclass(frozen=True)
class PlanSettings:
    """Operator-wide settings and autoscaler decisions that shape the desired objects."""

    image: str = DEFAULT_SERVING_IMAGE
    gpu_image: str = DEFAULT_GPU_IMAGE
    #: Environment of every Ray container (Ray Serve's settings must agree on every node).
    ray_serve_env: dict[str, str] = field(default_factory=ray_serve_env)
    #: Fixed replica counts per model, written by Shoal's autoscaler (others autoscale in Ray).
    replicas: dict[str, int] = field(default_factory=dict)
    #: Router quality weight in force (lower than the policy's under budget pressure).
    effective_alpha: str | None = None
    #: Where the operator and KubeRay run (the NetworkPolicy lets them reach Ray's dashboard).
    peers: Peers = field(default_factory=Peers)
    #: External models (engine openai) whose API key Secret its owner granted for their
    #: endpoint's host: only these keys are mounted (shoal.operator.external decides).
    granted_model_keys: frozenset[str] = frozenset()
    #: Addresses of the host names the external models' endpoints name, as the operator
    #: resolved them (the NetworkPolicy's egress rules when egress is Restricted).
    egress_addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Write a CiliumNetworkPolicy naming the external hosts (toFQDNs) beside the
    #: NetworkPolicy of a fleet whose egress is Restricted (a cluster whose CNI is Cilium).
    cilium_fqdn_policy: bool = False
    #: Models whose LoRA store credentials Secret its owner granted for the store's host:
    #: only these are mounted (shoal.operator.lora decides).
    granted_lora_credentials: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DesiredChildren:
    """Everything a fleet should own."""

    rayservice: dict[str, Any]
    service: dict[str, Any]
    router_configmap: dict[str, Any] | None
    plans: list[ModelDeploymentPlan]
    network_policy: dict[str, Any]
    disruption_budget: dict[str, Any]
    http_route: dict[str, Any] | None = None
    fqdn_policy: dict[str, Any] | None = None

    def objects(self) -> list[dict[str, Any]]:
        """The children in apply order (the ConfigMap before the pods that mount it, the
        NetworkPolicy before the pods it guards, the route after the Service it points at)."""
        out = [self.router_configmap] if self.router_configmap else []
        fqdn = [self.fqdn_policy] if self.fqdn_policy else []
        guards = [self.network_policy, *fqdn, self.disruption_budget]
        route = [self.http_route] if self.http_route else []
        return [*out, *guards, self.rayservice, self.service, *route]


def owner_reference(fleet: ModelFleet) -> dict[str, Any]:
    """ownerReference that ties a child to its fleet (garbage-collected with it)."""
    return {
        "apiVersion": API_VERSION,
        "kind": ModelFleet.KIND,
        "name": fleet.metadata.name,
        "uid": fleet.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(fleet: ModelFleet, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": fleet.metadata.namespace,
        "labels": names.fleet_labels(fleet.metadata.name, component),
        "ownerReferences": [owner_reference(fleet)],
    }


def build_args(
    fleet: ModelFleet,
    policy: RoutingPolicy,
    artifact: RouterArtifact | None,
    settings: PlanSettings,
) -> BuildArgs:
    """The serving builder's args for this fleet; PlanError when they cannot work."""
    cluster = policy.spec.strategy == "cluster"
    if cluster and artifact is None:
        raise PlanError("the cluster strategy needs a fitted router artifact")
    try:
        return BuildArgs(
            fleet_name=fleet.metadata.name,
            namespace=fleet.metadata.namespace or "default",
            fleet=fleet.spec,
            policy=policy.spec,
            router_artifact_path=f"{names.ARTIFACT_MOUNT_DIR}/{names.ARTIFACT_KEY}"
            if cluster
            else None,
            effective_alpha=settings.effective_alpha,
            replicas=dict(settings.replicas),
        )
    except ValidationError as exc:
        reasons = [e["msg"].removeprefix("Value error, ") for e in exc.errors()]
        raise PlanError("; ".join(reasons)) from exc


def _k8s_resources(res: Resources, default: Resources, gpus: int = 0) -> dict[str, Any]:
    cpu = res.cpu or default.cpu
    memory = res.memory or default.memory
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts[GPU_RESOURCE] = gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_template(
    fleet: ModelFleet, container: str, image: str, resources: dict[str, Any]
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": container,
                "image": image,
                "resources": resources,
                "ports": [dict(p) for p in HEAD_PORTS] if container == "ray-head" else [],
            }
        ]
    }
    if not spec["containers"][0]["ports"]:
        del spec["containers"][0]["ports"]
    return {"metadata": {"labels": {names.FLEET_LABEL: fleet.metadata.name}}, "spec": spec}


def _equip_for_the_ingress(
    template: dict[str, Any], fleet: ModelFleet, policy: RoutingPolicy, mount: bool
) -> None:
    """Give a Ray pod what the ingress needs, since Ray may place the ingress on any node with
    CPUs (GPU workers included): the router artifact, the key that signs completion ids (the
    same in every ingress replica, so any replica attributes feedback; optional: without the
    Secret each replica makes its own) as a file, and the embedder's API key from its
    Secret."""
    spec, container = template["spec"], template["spec"]["containers"][0]
    # The key as a file (a secret in the environment leaks into process listings and dumps).
    key_file = f"{names.FEEDBACK_KEY_MOUNT_DIR}/{names.FEEDBACK_KEY_KEY}"
    container["env"].append({"name": FEEDBACK_KEY_FILE_ENV, "value": key_file})
    container.setdefault("volumeMounts", []).append(
        {"name": "feedback-key", "mountPath": names.FEEDBACK_KEY_MOUNT_DIR, "readOnly": True}
    )
    key_volume = {"secretName": names.feedback_key_secret_name(fleet.metadata.name),
                  "optional": True, "items": [{"key": names.FEEDBACK_KEY_KEY,
                                               "path": names.FEEDBACK_KEY_KEY}]}  # fmt: skip
    spec.setdefault("volumes", []).append({"name": "feedback-key", "secret": key_volume})
    ref = policy.spec.embedder.api_key_secret_ref
    if policy.spec.strategy == "cluster" and ref is not None:
        secret = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
        container["env"].append({"name": EMBEDDER_API_KEY_ENV, "valueFrom": secret})
    if mount:  # before any model claims (kept in place: first in the lists)
        container["volumeMounts"] = [
            {"name": "router-artifact", "mountPath": names.ARTIFACT_MOUNT_DIR, "readOnly": True},
            *container.get("volumeMounts", []),
        ]
        spec["volumes"] = [
            {
                "name": "router-artifact",
                "configMap": {"name": names.router_configmap_name(fleet.metadata.name)},
            },
            *spec.get("volumes", []),
        ]


def model_claims(models: list[ModelSpec]) -> list[str]:
    """The PersistentVolumeClaims that ``pvc://claim/path`` sources of ``models`` name (the
    weights, and a draft model's where it is on a claim)."""
    sources = [s for m in models for s in (m.source or "", *extra_sources(m))]
    claims = {s[len("pvc://") :].split("/", 1)[0] for s in sources if s.startswith("pvc://")}
    return sorted(claims)


def _mount_claims(template: dict[str, Any], claims: list[str]) -> None:
    """Mount each claim read-only at ``PVC_MOUNT_ROOT/<claim>``, where the Ray Serve app looks
    for a ``pvc://`` model's weights (:func:`shoal.contract.local_path`)."""
    if not claims:
        return
    spec, container = template["spec"], template["spec"]["containers"][0]
    for i, claim in enumerate(claims):
        volume = f"model-pvc-{i}"
        spec.setdefault("volumes", []).append(
            {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        container.setdefault("volumeMounts", []).append(
            {"name": volume, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True}
        )


def _cpu_worker_group(
    fleet: ModelFleet, args: BuildArgs, plans: list[ModelDeploymentPlan], image: str
) -> dict[str, Any]:
    node = fleet.spec.serving.cpu_worker.resources
    node_cpus = parse_quantity(node.cpu or DEFAULT_CPU_WORKER.cpu or "4")
    needed = Decimal(str(args.ingress.num_cpus)) * args.ingress.num_replicas
    for p in plans:
        if "num_gpus" not in p.ray_actor_options:
            needed += Decimal(str(p.ray_actor_options["num_cpus"])) * p.replicas.max
    max_nodes = max(1, math.ceil(needed / node_cpus)) if node_cpus > 0 else 1
    template = _pod_template(fleet, "ray-worker", image, _k8s_resources(node, DEFAULT_CPU_WORKER))
    _mount_claims(template, model_claims([m for m in fleet.spec.models if m.accelerator is None]))
    return {
        "groupName": "cpu",
        "replicas": 1,
        "minReplicas": 1,
        "maxReplicas": max_nodes,
        "rayStartParams": {},
        "template": template,
    }


def _gpu_worker_groups(
    fleet: ModelFleet, plans: list[ModelDeploymentPlan], image: str
) -> list[dict[str, Any]]:
    by_type: dict[str, list[ModelDeploymentPlan]] = {}
    for p in plans:
        if "num_gpus" in p.ray_actor_options:
            by_type.setdefault(str(p.ray_actor_options["accelerator_type"]), []).append(p)
    groups = []
    models = {m.name: m for m in fleet.spec.models}
    for acc_type in sorted(by_type):
        group = by_type[acc_type]
        gpus = max(int(p.ray_actor_options["num_gpus"]) for p in group)
        lo = sum(p.replicas.min for p in group)
        hi = sum(p.replicas.max for p in group)
        res = _largest_resources([models[p.model].resources for p in group])
        template = _gpu_template(fleet, image, res, gpus, acc_type)
        _mount_claims(template, model_claims([models[p.model] for p in group]))
        groups.append(
            {
                "groupName": f"gpu-{acc_type.lower().replace('_', '-').replace('.', '-')}",
                "replicas": lo,
                "minReplicas": lo,
                "maxReplicas": max(hi, 1),
                "rayStartParams": {},
                "template": template,
            }
        )
    return groups


def _gpu_template(
    fleet: ModelFleet, image: str, res: Resources, gpus: int, acc_type: str
) -> dict[str, Any]:
    template = _pod_template(
        fleet, "ray-worker", image, _k8s_resources(res, DEFAULT_CPU_WORKER, gpus)
    )
    template["metadata"]["labels"][f"{names.FLEET_LABEL.split('/')[0]}/accelerator"] = acc_type
    template["spec"]["tolerations"] = [
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    ]
    return template


def _largest_resources(all_res: list[Resources | None]) -> Resources:
    cpus = [r.cpu for r in all_res if r and r.cpu]
    mems = [r.memory for r in all_res if r and r.memory]
    return Resources(
        cpu=max(cpus, key=parse_quantity) if cpus else None,
        memory=max(mems, key=parse_quantity) if mems else None,
    )


def serve_config_v2(args: BuildArgs, access: AccessConfig | None = None) -> str:
    """KubeRay's ``serveConfigV2``: Ray Serve's config file as a YAML string (``access``: the
    ingress's ``user_config``; None: an open fleet without tenants)."""
    config = {
        "http_options": {"host": "0.0.0.0", "port": names.SERVE_PORT},
        "applications": [serve_application(args, access)],
    }
    return yaml.dump(config, Dumper=_YAML_DUMPER, sort_keys=True, width=1000)


def desired_rayservice(
    fleet: ModelFleet,
    policy: RoutingPolicy,
    args: BuildArgs,
    plans: list[ModelDeploymentPlan],
    artifact: RouterArtifact | None,
    settings: PlanSettings,
    access: AccessConfig | None = None,
) -> dict[str, Any]:
    """The fleet's RayService."""
    serving = fleet.spec.serving
    image = serving.image or settings.image
    gpu_image = serving.gpu_image or settings.gpu_image
    meta = _metadata(fleet, names.rayservice_name(fleet.metadata.name), "serving")
    if artifact is not None:
        meta["annotations"] = {names.ARTIFACT_ANNOTATION: artifact.checksum}
    head = {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": _pod_template(
            fleet, "ray-head", image, _k8s_resources(serving.head.resources, DEFAULT_HEAD)
        ),
    }
    workers = [
        _cpu_worker_group(fleet, args, plans, image),
        *_gpu_worker_groups(fleet, plans, gpu_image),
    ]
    for group in (head, *workers):
        # Ray Serve's settings must agree on every node (HAProxy in front of each).
        env = [{"name": k, "value": v} for k, v in settings.ray_serve_env.items()]
        group["template"]["spec"]["containers"][0]["env"] = env
        _equip_for_the_ingress(group["template"], fleet, policy, mount=artifact is not None)
        mount_model_keys(group["template"], fleet, settings.granted_model_keys)
        if group is not head:  # models' replicas run on workers only
            labels = group["template"]["metadata"]["labels"]
            accelerator = labels.get(f"{names.FLEET_LABEL.split('/')[0]}/accelerator")
            mount_lora_credentials(
                group["template"], fleet, settings.granted_lora_credentials, accelerator
            )
        # Only the head keeps an API token: KubeRay's autoscaler sidecar runs there.
        security.harden_pod_template(group["template"], api_token=group is head)
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": meta,
        "spec": {
            "serveConfigV2": serve_config_v2(args, access),
            "rayClusterConfig": {
                "rayVersion": serving.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": security.autoscaler_options(),
                "headGroupSpec": head,
                "workerGroupSpecs": workers,
            },
        },
    }


def desired_service(fleet: ModelFleet) -> dict[str, Any]:
    """The fleet endpoint: Ray Serve's HTTP proxies on pods KubeRay marks as serving."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(fleet, names.service_name(fleet.metadata.name), "endpoint"),
        "spec": {
            "type": fleet.spec.serving.service_type,
            "selector": {names.FLEET_LABEL: fleet.metadata.name, "ray.io/serve": "true"},
            "ports": [
                {"name": "http", "port": names.SERVE_PORT, "targetPort": names.SERVE_PORT,
                 "protocol": "TCP"}
            ],
        },
    }  # fmt: skip


def desired_http_route(fleet: ModelFleet) -> dict[str, Any] | None:
    """The HTTPRoute from the fleet's Gateways to its Service (None: no gateway named).

    Only the OpenAI API's paths (``/v1``) are routed; TLS is terminated by the Gateway's
    listener, so the route carries plain HTTP to the Service inside the cluster.
    """
    gateway = fleet.spec.serving.gateway
    if gateway is None:
        return None
    parents = []
    for ref in gateway.parent_refs:
        parent: dict[str, Any] = {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": ref.name,
        }
        if ref.namespace:
            parent["namespace"] = ref.namespace
        if ref.section_name:
            parent["sectionName"] = ref.section_name
        parents.append(parent)
    spec: dict[str, Any] = {"parentRefs": parents}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    spec["rules"] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
            "backendRefs": [
                {
                    "group": "",
                    "kind": "Service",
                    "name": names.service_name(fleet.metadata.name),
                    "port": names.SERVE_PORT,
                }
            ],
        }
    ]
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": _metadata(fleet, names.http_route_name(fleet.metadata.name), "endpoint"),
        "spec": spec,
    }


def desired_router_configmap(fleet: ModelFleet, artifact: RouterArtifact) -> dict[str, Any]:
    """ConfigMap with the router artifact the fleet's ingress loads."""
    meta = _metadata(fleet, names.router_configmap_name(fleet.metadata.name), "router")
    meta["annotations"] = {names.ARTIFACT_ANNOTATION: artifact.checksum}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "binaryData": {names.ARTIFACT_KEY: base64.b64encode(artifact.data).decode("ascii")},
    }


def desired_feedback_key_secret(fleet: ModelFleet, key: str) -> dict[str, Any]:
    """The Secret holding the fleet's completion-id signing key ``key`` (random, made by the
    operator once: it creates this Secret only where none exists and never reads it back)."""
    meta = _metadata(fleet, names.feedback_key_secret_name(fleet.metadata.name), "feedback")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": {names.FEEDBACK_KEY_KEY: key},
    }


def desired_children(
    fleet: ModelFleet,
    policy: RoutingPolicy,
    artifact: RouterArtifact | None,
    settings: PlanSettings,
    access: AccessConfig | None = None,
) -> DesiredChildren:
    """Everything the fleet should own; :class:`PlanError` for specs that cannot work.

    ``access``: who may call the fleet (:func:`shoal.planning.tenants.access_config`); None:
    anyone, with no tenants to tell apart."""
    if policy.spec.strategy != "cluster":
        artifact = None
    args = build_args(fleet, policy, artifact, settings)
    plans = deployment_plans(args)
    return DesiredChildren(
        rayservice=desired_rayservice(fleet, policy, args, plans, artifact, settings, access),
        service=desired_service(fleet),
        router_configmap=desired_router_configmap(fleet, artifact) if artifact else None,
        plans=plans,
        network_policy=desired_network_policy(
            fleet,
            _metadata(fleet, names.network_policy_name(fleet.metadata.name), "network"),
            settings.peers,
            settings.egress_addresses,
        ),
        disruption_budget=desired_pod_disruption_budget(
            fleet, _metadata(fleet, names.disruption_budget_name(fleet.metadata.name), "serving")
        ),
        http_route=desired_http_route(fleet),
        fqdn_policy=desired_fqdn_policy(
            fleet, _metadata(fleet, names.network_policy_name(fleet.metadata.name), "network")
        )
        if settings.cilium_fqdn_policy
        else None,
    )
