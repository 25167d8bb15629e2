"""kopf registrations: when to reconcile what. Thin on purpose; the work is in
:mod:`shoal.operator.fleets` and :mod:`shoal.operator.policies`.

Run with ``python -m shoal.operator`` (or ``kopf run -m shoal.operator.handlers``).

- Fleets reconcile on create, update, resume, and whenever KubeRay changes their RayService's
  status; policies on create, update and resume, after which every fleet that references the
  policy is reconciled (found through an in-memory index).
- One periodic loop (:mod:`shoal.operator.resync`), not a kopf timer per object, re-checks
  every fleet and policy (drift, missed events, changed calibration data), runs the
  autoscaler and refits routers from feedback (:mod:`shoal.operator.refit`), at a bounded
  rate. With no per-object timers, deleting a fleet waits for its
  finalizer handler only, never for a timer to stop.
- Deleting a fleet deletes its children (a finalizer; ownerReferences do the same where a
  garbage collector runs).
- Watch handlers keep the operator's cache (:mod:`shoal.operator.cache`) current, so handlers
  read fleets, policies, tenants and RayServices from memory instead of with GETs.
- Tenants: a created, changed or deleted Tenant reconciles the fleet it names (and the one
  it named before), which renders the fleet's access config and writes every one of its
  tenants' status (:mod:`shoal.operator.tenants`). The periodic loop re-reads the key
  Secrets of every fleet with tenants every ``SHOAL_TENANT_KEY_RESYNC_SECONDS`` (10 s) and
  reconciles the fleet when what they say changed, so a rotated key takes effect without a
  restart or a watch on Secrets; and, with Prometheus configured, reads each tenant's use of
  the last hour into its status.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from shoal.api.v1alpha1 import API_VERSION, GROUP, VERSION, ModelFleet, RoutingPolicy, Tenant
from shoal.autoscaling.prometheus import PrometheusSource
from shoal.operator import credentials, spend, tenants
from shoal.operator.autoscaler import AutoscalerRuntime, autoscale_fleet, runtime
from shoal.operator.cache import ObjectCache
from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import delete_fleet_children, reconcile_fleet
from shoal.operator.gateway import KubeGateway
from shoal.operator.locks import FleetLocks
from shoal.operator.metrics import FITS, observed
from shoal.operator.ownership import delete_owned
from shoal.operator.policies import reconcile_policy
from shoal.operator.refit import RefitState, feedback_enabled, refit_policy
from shoal.operator.resync import PeriodicLoop, Schedule
from shoal.planning import names

log = logging.getLogger(__name__)
FLEETS, POLICIES, TENANTS = "modelfleets", "routingpolicies", "tenants"
#: The finalizer kopf puts on every fleet (and policy) before its first handler runs.
FINALIZER = f"{GROUP}/finalizer"
#: Threads that run synchronous handlers (kopf's default is a few more than the CPUs).
HANDLER_THREADS = 16


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@kopf.on.login()
async def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.AiohttpSession:
    """kopf connects with the same credentials as the operator's own client, through a
    session with a bounded connection pool (:func:`shoal.operator.credentials.kopf_session`)."""
    trust_env = settings.networking.trust_env
    # Reading the kubeconfig may run an exec plugin: not on the event loop.
    info = await asyncio.to_thread(
        lambda: credentials.connection_info(credentials.api_client(), trust_env=trust_env)
    )
    return credentials.kopf_session(info)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's state under shoal.dev annotations; events at info level; our config in memo;
    the periodic loop started."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    # Recover quickly from API outages: short watch timeouts, quick reconnects.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 70
    settings.watching.reconnect_backoff = 1.0
    settings.networking.error_backoffs = [1, 2, 5, 10]
    # Handlers mostly wait for the API server: enough threads to keep it busy when many
    # fleets arrive at once, each with a connection of its own.
    settings.execution.max_workers = HANDLER_THREADS
    config = OperatorConfig.from_env()
    memo.config = config
    # Operator-wide, before any object's memo is copied from this one: kopf gives each object
    # a shallow copy of the operator's memo, so these are shared by every object's handlers.
    memo.cache = ObjectCache()
    # Complete for fleets and policies: the indexes below put every one of them in it.
    memo.cache.authoritative |= {
        (API_VERSION, ModelFleet.KIND),
        (API_VERSION, RoutingPolicy.KIND),
        (API_VERSION, Tenant.KIND),
    }
    memo.gateway = KubeGateway(
        credentials.api_client(pool_size=HANDLER_THREADS + 2),
        timeout=config.api_timeout_seconds,
        cache=memo.cache,
    )
    memo.locks = FleetLocks()
    # One lock per policy (its own set: a fleet's reconcile runs under a policy's), so a fit
    # and a refit of the same policy never write its artifact at once.
    memo.policy_locks = FleetLocks()
    memo.indexes = {}  # kopf's live indexes, for the periodic loop (filled by handlers)
    memo.autoscaler = AutoscalerRuntime.from_config(config)
    memo.usage_source = PrometheusSource(config.prometheus_url) if config.prometheus_url else None
    memo.refit = RefitState.from_url(config.prometheus_url)
    memo.periodic = _periodic_loop(memo, config)
    memo.periodic.start()


@kopf.on.cleanup()
def stop_periodic(memo: kopf.Memo, **_: Any) -> None:
    """Stop the periodic loop with the operator."""
    memo.periodic.stop()


def _periodic_loop(memo: kopf.Memo, config: OperatorConfig) -> PeriodicLoop:
    cache: ObjectCache = memo.cache

    def fleets() -> list[tuple[str, str]]:
        return cache.keys(API_VERSION, ModelFleet.KIND)

    def policies() -> list[tuple[str, str]]:
        return cache.keys(API_VERSION, RoutingPolicy.KIND)

    def resync(ns: str, name: str) -> None:
        _quietly(lambda: _reconcile_fleet(_ref(ns, name), memo, verify=True), "reconciled")

    def autoscale(ns: str, name: str) -> None:
        _quietly(lambda: _autoscale(_ref(ns, name), memo), "autoscaled")

    def refitting() -> list[tuple[str, str]]:
        return [
            k
            for k in policies()
            if feedback_enabled(cache.get((API_VERSION, RoutingPolicy.KIND, *k)) or {})
        ]

    def refit(ns: str, name: str) -> None:
        body = memo.gateway.get(API_VERSION, RoutingPolicy.KIND, ns, name)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            _refit(body, memo)

    def policy_resync(ns: str, name: str) -> None:
        body = memo.gateway.get(API_VERSION, RoutingPolicy.KIND, ns, name)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            _quietly(lambda: _policy_resync(body, memo), "reconciled")

    def tenanted() -> list[tuple[str, str]]:
        return tenants.fleets_with_tenants(memo.gateway)

    fingerprints: dict[tuple[str, str], Any] = {}

    def tenant_keys(ns: str, name: str) -> None:
        # Re-read the tenants' Secrets; reconcile the fleet only when what they say changed, or
        # the fleet did (gone: its tenants are told) (cheap at rest: a GET per Secret, no
        # rendering, no write).
        fleet = memo.gateway.get(API_VERSION, ModelFleet.KIND, ns, name) or {"metadata": {}}
        exists = (fleet["metadata"].get("uid"), fleet["metadata"].get("generation"))
        seen = (exists, tenants.key_fingerprint(memo.gateway, ns, name))
        if fingerprints.get((ns, name)) == seen:
            return
        try:
            _tenants_changed(memo, ns, name)
        except (kopf.PermanentError, kopf.TemporaryError) as exc:
            log.info("not reconciled yet: %s", exc)
            return  # tried again at the next re-read
        fingerprints[(ns, name)] = seen
        for key in [k for k in list(fingerprints) if k not in set(tenanted())]:
            del fingerprints[key]

    def tenant_usage(ns: str, name: str) -> None:
        if memo.usage_source is not None:
            tenants.update_usage(memo.gateway, memo.usage_source, ns, name, _now())

    schedules = [
        Schedule("re-check", fleets, resync, config.resync_seconds),
        Schedule("autoscaler", fleets, autoscale, config.autoscaler_interval_seconds),
        # Policies fetch calibration URLs and call embedders: a lane of their own.
        Schedule("policy re-check", policies, policy_resync, config.resync_seconds, lane="slow"),
        Schedule("tenant keys", tenanted, tenant_keys, config.tenant_key_resync_seconds),
        # Every policy with feedback on is looked at on the re-check cadence; each is refit at
        # most once per its spec.feedback.refitIntervalSeconds.
        Schedule("router refit", refitting, refit, config.resync_seconds, lane="slow"),
    ]

    def fleet_spend(ns: str, name: str) -> None:
        if memo.usage_source is not None:
            spend.update_spend(memo.gateway, memo.usage_source, ns, name, _now())

    if config.prometheus_url:
        schedules.append(
            Schedule("tenant usage", tenanted, tenant_usage, config.tenant_usage_interval_seconds)
        )
        schedules.append(
            Schedule("fleet spend", fleets, fleet_spend, config.tenant_usage_interval_seconds)
        )
    return PeriodicLoop(schedules, rate=config.periodic_rate_per_second)


def _ref(namespace: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}}


def _quietly(fn: Any, what: str) -> None:
    try:
        fn()
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        log.info("not %s yet: %s", what, exc)


def _being_deleted(fleet: dict[str, Any]) -> bool:
    return bool(fleet["metadata"].get("deletionTimestamp"))


def _not_ours_to_build(fleet: dict[str, Any] | None) -> bool:
    """Whether no child may be written for this fleet now: it is gone, being deleted (its
    children belong to the finalizer), or does not carry the finalizer yet. kopf adds the
    finalizer before any create or resume handler runs; until then the fleet may be deleted
    at any moment without the finalizer's handler ever running, and a child written for it
    by the periodic loop or a policy's change would outlive it (where no garbage collector
    follows ownerReferences). Its create handler builds it once the finalizer is on."""
    if fleet is None or _being_deleted(fleet):
        return True
    return FINALIZER not in (fleet["metadata"].get("finalizers") or [])


def _seen(memo: kopf.Memo, event: kopf.RawEvent, kwargs: dict[str, Any]) -> None:
    """Keep the cache current with one watch event; adopt kopf's context and indexes for the
    periodic loop."""
    memo.periodic.adopt_context()
    memo.indexes.setdefault("fleets_by_policy", kwargs["fleets_by_policy"])
    obj = event["object"]
    if event["type"] == "DELETED":
        memo.cache.deleted(obj)
    elif event["type"] in ("ADDED", "MODIFIED", None):  # None: the initial listing
        memo.cache.put(obj)


@kopf.on.event(GROUP, VERSION, FLEETS)
async def fleet_seen(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """A fleet changed (or is listed): the cache follows; a deleted fleet's lock goes."""
    _seen(memo, event, kwargs)
    if event["type"] == "DELETED":
        meta = event["object"]["metadata"]
        memo.locks.forget(meta.get("namespace") or "default", meta["name"])


@kopf.on.event(GROUP, VERSION, POLICIES)
async def policy_seen(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """A policy changed (or is listed): the cache follows."""
    _seen(memo, event, kwargs)


@kopf.on.event(GROUP, VERSION, TENANTS)
async def tenant_seen(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """A tenant changed (or is listed): the cache follows; a deleted tenant's fleet drops its
    keys (no finalizer needed: the fleet is rendered from the tenants that exist)."""
    _seen(memo, event, kwargs)
    if event["type"] == "DELETED":
        obj = event["object"]
        ns = obj["metadata"].get("namespace") or "default"
        fleet = ((obj.get("spec") or {}).get("fleetRef") or {}).get("name")
        if fleet:
            # In a thread, like kopf's sync handlers, in this handler's context (kopf's event
            # queue: the fleet's events are posted).
            context = contextvars.copy_context()
            job = lambda: _quietly(lambda: _tenants_changed(memo, ns, fleet), "reconciled")  # noqa: E731
            await asyncio.get_running_loop().run_in_executor(None, context.run, job)


@kopf.index(GROUP, VERSION, TENANTS)
def tenants_cached(body: kopf.Body, memo: kopf.Memo, **_: Any) -> Any:
    """Puts every tenant into the cache before any handler runs (see below); indexes nothing."""
    memo.cache.put(dict(body))
    return None


def _tenants_changed(memo: kopf.Memo, ns: str, fleet: str) -> None:
    """Reconcile the fleet whose tenants changed (it writes their statuses too); tenants of a
    fleet that does not exist are told so."""
    if memo.gateway.get(API_VERSION, ModelFleet.KIND, ns, fleet) is None:
        tenants.report_orphans(memo.gateway, ns, fleet, _now())
        return
    _reconcile_fleet(_ref(ns, fleet), memo)


@kopf.on.resume(GROUP, VERSION, TENANTS)
@kopf.on.create(GROUP, VERSION, TENANTS)
@kopf.on.update(GROUP, VERSION, TENANTS)
def tenant_changed(
    body: kopf.Body, old: Any, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """A tenant is new or changed: its fleet (and the one it named before) follows."""
    ns = body.metadata.namespace or "default"
    fleets = {(body.get("spec") or {}).get("fleetRef", {}).get("name")}
    fleets.add(((old or {}).get("spec") or {}).get("fleetRef", {}).get("name"))
    for fleet in sorted(f for f in fleets if f):
        try:
            _tenants_changed(memo, ns, fleet)
        except (kopf.PermanentError, kopf.TemporaryError) as exc:
            logger.info(f"fleet {fleet} not reconciled yet: {exc}")


@kopf.index(GROUP, VERSION, FLEETS)
def fleets_by_policy(
    namespace: str | None, name: str, spec: kopf.Spec, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> Any:
    """(namespace, policy name) -> names of the fleets that reference the policy.

    Also puts the fleet into the cache: kopf indexes every fleet (and policy, below) before
    any handler runs, so the cache holds them all and a miss means there is no such object.
    """
    memo.cache.put(dict(body))
    return {(namespace, (spec.get("routingPolicyRef") or {}).get("name")): name}


@kopf.index(GROUP, VERSION, POLICIES)
def policies_cached(body: kopf.Body, memo: kopf.Memo, **_: Any) -> Any:
    """Puts every policy into the cache before any handler runs (see above); indexes nothing."""
    memo.cache.put(dict(body))
    return None


def _reconcile_fleet(body: Any, memo: kopf.Memo, verify: bool = False) -> None:
    # Serialised with the autoscaler and the finalizer, on the fleet as it is now: a fleet
    # being deleted belongs to the finalizer (reconciling it would re-create its children).
    locks: FleetLocks = memo.locks
    with locks.hold(memo.gateway, body) as fresh:
        if _not_ours_to_build(fresh):
            return
        with observed("ModelFleet"):
            reconcile_fleet(memo.gateway, memo.config, fresh, _now(), verify=verify)


def _autoscale(body: Any, memo: kopf.Memo) -> None:
    """Shoal's autoscaler: evaluate the fleet; persist, apply or only report the decision."""
    rt = runtime(memo)
    locks: FleetLocks = memo.locks
    with locks.hold(memo.gateway, body) as fresh:
        if _not_ours_to_build(fresh):
            return
        autoscale_fleet(memo.gateway, memo.config, rt.source, fresh, _now())


@kopf.on.resume(GROUP, VERSION, FLEETS)
@kopf.on.create(GROUP, VERSION, FLEETS)
@kopf.on.update(GROUP, VERSION, FLEETS)
def fleet_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile a fleet whose spec is new or changed, or that the operator resumes."""
    _reconcile_fleet(body, memo)


@kopf.on.delete(GROUP, VERSION, FLEETS)
def fleet_deleted(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Delete the fleet's children before the fleet goes (after any reconcile in flight)."""
    locks: FleetLocks = memo.locks
    with locks.hold(memo.gateway, body):
        fqdn = memo.config.fqdn_policies == "cilium"
        gone = delete_fleet_children(memo.gateway, body, fqdn=fqdn)
    logger.info(f"deleted {', '.join(gone) or 'no children'}")


def _status_seen(rs: Any) -> Any:
    """What of a RayService the fleet's status is made of: its generation and status."""
    return (rs.get("metadata", {}).get("generation"), rs.get("status"))


@kopf.on.event("ray.io", "v1", "rayservices", labels={names.FLEET_LABEL: kopf.PRESENT})
def rayservice_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """KubeRay changed a fleet's RayService (usually its status): refresh the fleet.

    Not when the event brings nothing new: the operator's own apply returned this RayService
    already (same generation and status), and the fleet's status was made from it; nor when
    the operator starts and lists the RayServices (every fleet is resumed anyway).
    """
    raw = event["object"]
    before = memo.cache.get(("ray.io/v1", "RayService", body.metadata.namespace or "default",
                             body.metadata.name))  # fmt: skip
    _seen(memo, event, kwargs)
    if event["type"] in ("DELETED", None) or body.get("metadata", {}).get("deletionTimestamp"):
        return
    if before is not None and _status_seen(before) == _status_seen(raw):
        return
    fleet = _ref(body.metadata.namespace or "default", body.metadata.labels[names.FLEET_LABEL])
    try:
        _reconcile_fleet(fleet, memo)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        logger.info(f"fleet not reconciled yet: {exc}")


def _follow(memo: kopf.Memo, ns: str | None, name: str, index: Any, logger: Any) -> None:
    """Reconcile every fleet that references the policy."""
    for fleet_name in list(index.get((ns, name), [])):  # the index changes meanwhile
        try:
            _reconcile_fleet(_ref(ns or "default", fleet_name), memo)
        except (kopf.PermanentError, kopf.TemporaryError) as exc:
            logger.info(f"fleet {fleet_name} not reconciled yet: {exc}")


def _reconcile_policy(body: Any, memo: kopf.Memo, index: kopf.Index[Any, Any], logger: Any) -> None:
    meta = body["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    try:
        with memo.policy_locks.held(ns, name):
            # As it is now (the watch cache): a refit may have written its status meanwhile.
            fresh = memo.gateway.get(API_VERSION, RoutingPolicy.KIND, ns, name) or body
            with observed("RoutingPolicy"):
                outcome = reconcile_policy(memo.gateway, memo.config, fresh, _now())
        if outcome.fitted:
            FITS.labels("ok").inc()
    finally:
        # Fleets follow their policy whatever happened to it (fitted, failed, unchanged).
        _follow(memo, body["metadata"].get("namespace"), body["metadata"]["name"], index, logger)


def _policy_resync(body: dict[str, Any], memo: kopf.Memo) -> None:
    """Periodic re-check: notices changed calibration data (the fingerprint changes). The
    policy's fleets follow when the policy's status changed (they re-check on their own
    otherwise)."""
    meta = body["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    try:
        with memo.policy_locks.held(ns, name):
            # The policy as it is now: a fit or refit may have finished while this waited.
            body = memo.gateway.get(API_VERSION, RoutingPolicy.KIND, ns, name) or body
            with observed("RoutingPolicy"):
                outcome = reconcile_policy(memo.gateway, memo.config, body, _now())
        if outcome.fitted:
            FITS.labels("ok").inc()
    except (kopf.PermanentError, kopf.TemporaryError):
        FITS.labels("failed").inc()
        raise
    finally:
        after = memo.gateway.get(API_VERSION, RoutingPolicy.KIND, ns, name) or {}
        if after.get("status") != body.get("status"):
            index = memo.indexes.get("fleets_by_policy")
            if index is not None:
                _follow(memo, ns, name, index, log)


def _refit(body: dict[str, Any], memo: kopf.Memo) -> None:
    """Refit the policy's router from feedback (:mod:`shoal.operator.refit`); fleets follow
    a new artifact version."""
    meta = body["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    index = memo.indexes.get("fleets_by_policy")
    fleets = sorted(index.get((ns, name), [])) if index is not None else []
    with memo.policy_locks.held(ns, name):
        body = memo.gateway.get(API_VERSION, RoutingPolicy.KIND, ns, name) or body
        outcome = refit_policy(memo.gateway, memo.refit, body, fleets, _now())
    if outcome.reason == "Refit" and index is not None:
        _follow(memo, ns, name, index, log)


@kopf.on.resume(GROUP, VERSION, POLICIES)
@kopf.on.create(GROUP, VERSION, POLICIES)
@kopf.on.update(GROUP, VERSION, POLICIES)
def policy_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Fit the policy's router if its spec or data changed; then refresh its fleets."""
    _reconcile_policy(body, memo, kwargs["fleets_by_policy"], logger)


@kopf.on.delete(GROUP, VERSION, POLICIES)
def policy_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Delete the policy's fitted artifact with it (only when the policy owns it)."""
    delete_owned(
        memo.gateway,
        "v1",
        "ConfigMap",
        body.metadata.namespace or "default",
        names.policy_artifact_configmap_name(body.metadata.name),
        (RoutingPolicy.KIND, body.metadata.name, body.metadata.uid),
    )
