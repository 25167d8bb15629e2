"""Reconcile one ModelFleet: read its policy and artifact, plan, apply, write status.

Level-based: every call computes the whole desired state from what is there now, so it is
safe to run at any time, any number of times (create, update, resume, the periodic re-check,
a policy change, a RayService status change, a restart half-way through).

Writes only what changes: a child is applied when the live copy the operator knows (its
watch cache, or what its last write returned) does not cover the desired one, and the status
only when it differs. The periodic re-check passes ``verify=True``, which reads the children
it may read first (:func:`_current`), so drift made by others is found without writing
anything.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import kopf
from pydantic import ValidationError

from shoal.api.v1alpha1 import API_VERSION, ConditionStatus, ModelFleet, RoutingPolicy
from shoal.api.v1alpha1.fleet import AutoscalerStatus
from shoal.autoscaling.state import rendered_replicas
from shoal.contract.tenants import PROMETHEUS_URL_ENV
from shoal.operator import egress, events, external, lora, tenants
from shoal.operator.config import OperatorConfig
from shoal.operator.gateway import WRITE_ERRORS, Forbidden, KubeGateway
from shoal.operator.ownership import NameTaken, claim, delete_owned
from shoal.planning import names
from shoal.planning.children import (
    PlanError,
    PlanSettings,
    RouterArtifact,
    desired_children,
    desired_feedback_key_secret,
)
from shoal.planning.conditions import condition
from shoal.planning.drift import needs_apply
from shoal.planning.network import CILIUM_API_VERSION, Peers
from shoal.planning.status import (
    DEGRADED,
    EXPOSED,
    READY,
    FleetObservation,
    SpecProblem,
    fleet_status,
)
from shoal.planning.tenants import access_config
from shoal.planning.verification import EMBEDDER_ANNOTATION, policy_gate

log = logging.getLogger(__name__)


class FleetBlocked(kopf.PermanentError):
    """The fleet cannot be served as specified; its status says why."""


class FleetWaiting(kopf.TemporaryError):
    """The fleet waits for something that is on its way (a router fit)."""


@dataclass(frozen=True)
class FleetOutcome:
    """What one reconcile did, for events and metrics."""

    ready: bool
    reason: str
    applied: list[str]


def _policy_artifact(
    gw: KubeGateway, policy: RoutingPolicy
) -> tuple[RouterArtifact | None, str | None, str | None]:
    """The policy's fitted artifact, or why it is not there; and the embedder settings it
    was fitted with (:data:`~shoal.planning.verification.EMBEDDER_ANNOTATION`)."""
    art = policy.status.artifact if policy.status else None
    if art is None:
        return None, "waiting for the routing policy's router to be fitted", None
    ns = policy.metadata.namespace or "default"
    cm = gw.get("v1", "ConfigMap", ns, art.config_map)
    raw = ((cm or {}).get("binaryData") or {}).get(names.ARTIFACT_KEY)
    if raw is None:
        return None, f"router artifact ConfigMap {art.config_map} not found", None
    embedder = (((cm or {}).get("metadata") or {}).get("annotations") or {}).get(
        EMBEDDER_ANNOTATION
    )
    data = base64.b64decode(raw)
    from shoal.routing import artifact_checksum

    if artifact_checksum(data) != art.checksum:
        problem = f"router artifact in {art.config_map} does not match the policy's checksum"
        return None, problem, embedder
    return RouterArtifact(checksum=art.checksum, data=data), None, embedder


def _write_status(gw: KubeGateway, fleet: ModelFleet, status: dict[str, Any]) -> None:
    current = fleet.status.model_dump(mode="json", by_alias=True) if fleet.status else None
    if current == status:
        return
    # spend is the spend loop's to write (shoal.operator.spend): a reconcile holding an older
    # copy never rolls it back.
    status = {k: v for k, v in status.items() if k != "spend"}
    gw.patch_status(
        API_VERSION,
        ModelFleet.KIND,
        fleet.metadata.namespace or "default",
        fleet.metadata.name,
        status,
    )


def _event_on_transition(body: Any, fleet: ModelFleet, new: Any) -> None:
    old_ready = condition(fleet.status.conditions, READY) if fleet.status else None
    new_ready = condition(new.conditions, READY)
    old_deg = condition(fleet.status.conditions, DEGRADED) if fleet.status else None
    new_deg = condition(new.conditions, DEGRADED)
    changed = new_ready and (old_ready is None or old_ready.status != new_ready.status)
    if changed and new_ready and new_ready.status == ConditionStatus.TRUE:
        events.post(
            body, warning=False, reason="Ready", message=new_ready.message or "fleet is ready"
        )
    if (
        new_deg
        and new_deg.status == ConditionStatus.TRUE
        and (
            old_deg is None or old_deg.status != new_deg.status or old_deg.reason != new_deg.reason
        )
    ):
        events.post(body, warning=True, reason=new_deg.reason, message=new_deg.message)
    old_exp = condition(fleet.status.conditions, EXPOSED) if fleet.status else None
    new_exp = condition(new.conditions, EXPOSED)
    if (
        new_exp
        and new_exp.status == ConditionStatus.TRUE
        and (
            old_exp is None or (old_exp.status, old_exp.reason) != (new_exp.status, new_exp.reason)
        )
    ):
        events.post(body, warning=True, reason=new_exp.reason, message=new_exp.message)


def autoscaler_off_status(config: OperatorConfig) -> AutoscalerStatus:
    """``status.autoscaler`` while Shoal's autoscaler is off, and why it is."""
    message = (
        f"autoscaler off: {config.autoscaler_off_reason}; Ray Serve autoscales each model "
        "within its tier's bounds"
    )
    return AutoscalerStatus(mode="Off", message=message)


def plan_settings(config: OperatorConfig, fleet: ModelFleet) -> PlanSettings:
    """The operator's settings, plus the autoscaler's persisted decision while it owns the
    replicas (mode Active): fixed replicas for every model and the effective alpha."""
    env = dict(config.ray_serve_env)
    if config.prometheus_url:
        # The ingress restores tenants' recent usage from it when its store starts empty.
        env[PROMETHEUS_URL_ENV] = config.prometheus_url
    base = PlanSettings(
        image=config.serving_image,
        gpu_image=config.gpu_image,
        ray_serve_env=env,
        peers=Peers(
            operator_namespace=config.operator_namespace,
            kuberay_namespace=config.kuberay_namespace,
        ),
        cilium_fqdn_policy=config.fqdn_policies == "cilium",
    )
    if config.autoscaler_mode != "Active":
        return base  # Ray Serve autoscales every model within its tier's bounds
    status = fleet.status
    return replace(
        base,
        replicas=rendered_replicas(fleet.spec, status.autoscaler if status else None),
        effective_alpha=status.effective_alpha if status else None,
    )


def _current(gw: KubeGateway, obj: dict[str, Any], verify: bool) -> dict[str, Any] | None:
    """The live child as far as the operator knows it.

    The RayService from the watch cache (KubeRay's and anyone's changes reach it); when
    verifying, ConfigMaps read from the API server. Any child the operator knows nothing of
    (a new fleet, or the first reconcile after a start) is read once, so that an object of
    the name that someone else made is found before it is written over
    (:func:`shoal.operator.ownership.claim`); after that the operator's own last apply tells
    (one changed by someone else is put right at the fleet's next change or the operator's
    next start).
    """
    meta = obj["metadata"]
    where = (obj["apiVersion"], obj["kind"], meta["namespace"] or "default", meta["name"])
    if verify and obj["kind"] == "ConfigMap":
        return gw.read(*where)
    known, live = gw.known(*where)
    if not known:
        return gw.read(*where)
    return live


def _apply(gw: KubeGateway, obj: dict[str, Any], verify: bool) -> tuple[dict[str, Any], bool]:
    """Apply ``obj`` unless its live copy covers it already; (live object, written).
    :class:`NameTaken` when an object of its name is not the fleet's."""
    live = _current(gw, obj, verify)
    claim(obj, live)
    if live is not None and not needs_apply(live, obj):
        return live, False
    return gw.apply(obj), True


def reconcile_fleet(
    gw: KubeGateway,
    config: OperatorConfig,
    body: Any,
    now: datetime,
    settings: PlanSettings | None = None,
    *,
    verify: bool = False,
) -> FleetOutcome:
    """Bring one fleet's children and status in line with its spec.

    ``verify``: read every child from the API server before deciding whether to write it
    (the periodic re-check); otherwise the operator's cache decides.
    """
    try:
        fleet = ModelFleet.model_validate(dict(body))
    except ValidationError as exc:  # stored before a stricter schema, or written around it
        _report_invalid(gw, body, exc, now)
        raise FleetBlocked(f"invalid spec: {exc.errors()[0]['msg']}") from exc
    ns = fleet.metadata.namespace or "default"
    settings = settings or plan_settings(config, fleet)
    previous = fleet.status
    ref = fleet.spec.routing_policy_ref.name

    # Tenants first: their statuses are written whatever else holds the fleet up.
    try:
        tenant_bodies = tenants.tenants_of(gw, ns, fleet.metadata.name)
    except Forbidden:
        # Only where no watch cache holds them (a direct reconcile) are tenants listed. An
        # open fleet serves on without them; one that requires keys cannot be rendered.
        if fleet.spec.access.mode == "Tenants":
            raise
        tenant_bodies = []
    resolutions = tenants.resolve_tenants(gw, fleet, tenant_bodies)
    try:
        tenants.report(gw, resolutions, now)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        log.info("tenant statuses of fleet %s/%s not written: %s", ns, fleet.metadata.name, exc)
    access = access_config(fleet, resolutions, config.access_settings())
    counted = bool(tenant_bodies) or fleet.spec.access.mode == "Tenants"
    tenant_count = f"{sum(r.ready for r in resolutions)}/{len(tenant_bodies)}" if counted else None

    # External models' keys: mounted only where their Secrets' owners allow it.
    # Their endpoints' host names, resolved for the NetworkPolicy where egress is Restricted.
    grants = external.key_grants(gw, fleet)
    resolution = egress.resolve_endpoints(fleet)
    # LoRA adapters' store credentials: mounted only where their Secrets' owners allow it.
    lora_grants = lora.credential_grants(gw, fleet)
    # A refused key says more than an unresolved host: it wins where a model has both.
    refusals = external.KeyGrants(
        grants.granted, {**resolution.unresolved, **grants.refused, **lora_grants.refused}
    )
    external.report_refusals(body, fleet, refusals)
    settings = replace(
        settings,
        granted_model_keys=grants.granted,
        egress_addresses=resolution.addresses,
        granted_lora_credentials=lora_grants.granted,
    )

    def report(seen: FleetObservation) -> Any:
        seen = replace(seen, tenants=tenant_count, external_refusals=refusals.refusal_reasons)
        status = fleet_status(fleet, seen, previous, now)
        if status.autoscaler is None and config.autoscaler_mode == "Off":
            # A new fleet says so in its first status write, not in a second one.
            status = status.model_copy(update={"autoscaler": autoscaler_off_status(config)})
        _event_on_transition(body, fleet, status)
        _write_status(gw, fleet, status.model_dump(mode="json", by_alias=True))
        return status

    policy_raw = gw.get(API_VERSION, RoutingPolicy.KIND, ns, ref)
    if policy_raw is None:
        problem = SpecProblem(
            "RoutingPolicyNotFound",
            f"RoutingPolicy {ref!r} does not exist in namespace {ns}; the fleet becomes "
            "ready by itself once it is created",
        )
        report(FleetObservation(problem=problem))
        raise FleetBlocked(problem.message)
    policy = RoutingPolicy.model_validate(policy_raw)

    artifact, waiting, embedder = (None, None, None)
    if policy.spec.strategy == "cluster":
        artifact, waiting, embedder = _policy_artifact(gw, policy)
    # Only with what the operator verified: the policy's embedder endpoint and the Secret
    # the ingress sends there (shoal.planning.verification).
    unverified_wait, unverified = policy_gate(policy, embedder)
    if unverified is not None:
        report(FleetObservation(policy=policy, problem=unverified))
        raise FleetWaiting(unverified.message, delay=config.retry_seconds)
    if unverified_wait is not None:
        report(FleetObservation(policy=policy, router_waiting=unverified_wait))
        raise FleetWaiting(unverified_wait, delay=config.retry_seconds)
    if policy.spec.strategy == "cluster" and artifact is None:
        report(FleetObservation(policy=policy, router_waiting=waiting))
        raise FleetWaiting(waiting or "waiting for the router", delay=config.retry_seconds)
    try:
        children = desired_children(fleet, policy, artifact, settings, access)
    except PlanError as exc:
        problem = SpecProblem("InvalidRouting", f"fleet and routing policy disagree: {exc}")
        report(FleetObservation(policy=policy, problem=problem))
        raise FleetBlocked(problem.message) from exc

    applied, live_rs = [], None
    if _ensure_feedback_key(gw, fleet, verify):
        applied.append(f"Secret/{names.feedback_key_secret_name(fleet.metadata.name)}")
    for obj in children.objects():
        try:
            live, written = _apply(gw, obj, verify)
        except (*WRITE_ERRORS, NameTaken) as exc:
            what = f"{obj['kind']}/{obj['metadata']['name']}"
            problem = SpecProblem(exc.reason, f"cannot write {what}: {exc}")
            report(FleetObservation(policy=policy, problem=problem))
            raise
        if written:
            applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        if obj["kind"] == "RayService":
            live_rs = live
    _prune(gw, fleet, children.objects(), verify, fqdn=settings.cilium_fqdn_policy)
    status = report(
        FleetObservation(
            policy=policy,
            artifact_checksum=artifact.checksum if artifact else None,
            rayservice=live_rs,
            plans=children.plans,
        )
    )
    ready = condition(status.conditions, READY)
    return FleetOutcome(
        ready=bool(ready and ready.status == ConditionStatus.TRUE),
        reason=ready.reason if ready else "",
        applied=applied,
    )


def _ensure_feedback_key(gw: KubeGateway, fleet: ModelFleet, verify: bool) -> bool:
    """Create the fleet's completion-id signing key Secret, with a random key, unless one
    exists (an existing one, made here or by a person, is kept and never read). Without the
    RBAC to create it the fleet still runs, each ingress replica with a key of its own
    (feedback then reaches only the replica that answered); the log says so."""
    import secrets as random_keys

    name = names.feedback_key_secret_name(fleet.metadata.name)
    if not verify and gw.remembers("Secret", fleet.metadata.namespace, name):
        return False  # no key drawn for a request that is not sent
    secret = desired_feedback_key_secret(fleet, random_keys.token_hex(32))
    try:
        return gw.create(secret, remembered=not verify)
    except Forbidden as exc:
        log.warning("fleet %s/%s: cannot create its feedback key Secret (%s); each ingress "
                    "replica signs completion ids with a key of its own",
                    fleet.metadata.namespace, fleet.metadata.name, exc)  # fmt: skip
        return False


def _report_invalid(gw: KubeGateway, body: Any, exc: ValidationError, now: datetime) -> None:
    """Degraded status for a fleet whose spec this operator cannot read."""
    meta = body["metadata"]
    where = ".".join(str(p) for p in exc.errors()[0]["loc"])
    message = f"spec cannot be read: {where}: {exc.errors()[0]['msg']}"
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {"type": t, "status": s, "reason": "InvalidSpec", "message": message,
         "lastTransitionTime": stamp, "observedGeneration": meta.get("generation")}
        for t, s in ((READY, "False"), (DEGRADED, "True"))
    ]  # fmt: skip
    gw.patch_status(
        API_VERSION,
        ModelFleet.KIND,
        meta.get("namespace") or "default",
        meta["name"],
        {"observedGeneration": meta.get("generation"), "conditions": conditions},
    )
    events.post(body, warning=True, reason="InvalidSpec", message=message)


def _prune(
    gw: KubeGateway,
    fleet: ModelFleet,
    desired: list[dict[str, Any]],
    verify: bool,
    *,
    fqdn: bool = False,
) -> None:
    """Delete the fleet's router ConfigMap (strategy change), HTTPRoute (gateway removed)
    and, where the operator writes them (``fqdn``), its CiliumNetworkPolicy (egress Open
    again) when they are no longer desired.

    Only when they may exist: not when the operator knows they are gone (it deleted them, or
    a read found none), so an unchanged fleet costs no request here; nor for a fleet no
    reconcile has written a status for yet (a new one: none of its children were made, and
    one left by a reconcile that died before its status is found by the periodic re-check's
    read).
    """
    if not verify and fleet.status is None:
        return
    ns = fleet.metadata.namespace or "default"
    owner = (ModelFleet.KIND, fleet.metadata.name, fleet.metadata.uid)
    prunable = [
        ("v1", "ConfigMap", names.router_configmap_name(fleet.metadata.name)),
        ("gateway.networking.k8s.io/v1", "HTTPRoute", names.http_route_name(fleet.metadata.name)),
    ]
    if fqdn:
        prunable.append(
            (
                CILIUM_API_VERSION,
                "CiliumNetworkPolicy",
                names.network_policy_name(fleet.metadata.name),
            )
        )
    for api_version, kind, name in prunable:
        if any(o["kind"] == kind and o["metadata"]["name"] == name for o in desired):
            continue
        try:
            known, live = gw.known(api_version, kind, ns, name)
            # Read when unknown; a ConfigMap also when verifying (an HTTPRoute the operator
            # knows is taken from the cache).
            if not known or (verify and kind == "ConfigMap"):
                live = gw.read(api_version, kind, ns, name)
            if live is None:
                continue
            delete_owned(gw, api_version, kind, ns, name, owner, live)  # only the fleet's own
        except Forbidden as exc:  # not granted HTTPRoutes (Cilium's), for fleets without one
            if kind == "ConfigMap":
                raise
            log.info("%s/%s not pruned: %s", kind, name, exc)


def delete_fleet_children(gw: KubeGateway, body: Any, *, fqdn: bool = False) -> list[str]:
    """Delete every child of a fleet (the finalizer's work; GC does it too where it runs):
    each one read first and deleted only when the fleet owns it (its CiliumNetworkPolicy
    too where the operator writes them, ``fqdn``)."""
    name, ns = body["metadata"]["name"], body["metadata"].get("namespace") or "default"
    owner = (ModelFleet.KIND, name, body["metadata"].get("uid"))
    gone = []
    children = [
        ("ray.io/v1", "RayService", names.rayservice_name(name)),
        ("v1", "Service", names.service_name(name)),
        ("v1", "ConfigMap", names.router_configmap_name(name)),
        ("networking.k8s.io/v1", "NetworkPolicy", names.network_policy_name(name)),
        ("policy/v1", "PodDisruptionBudget", names.disruption_budget_name(name)),
        ("gateway.networking.k8s.io/v1", "HTTPRoute", names.http_route_name(name)),
    ]
    if fqdn:
        children.append(
            (CILIUM_API_VERSION, "CiliumNetworkPolicy", names.network_policy_name(name))
        )
    for api_version, kind, child in children:
        if delete_owned(gw, api_version, kind, ns, child, owner):
            gone.append(f"{kind}/{child}")
    return gone
