"""kopf registrations: when to reconcile what. Thin on purpose; the work is in
:mod:`shoal.operator.fleets` and :mod:`shoal.operator.policies`.

Run with ``python -m shoal.operator`` (or ``kopf run -m shoal.operator.handlers``).

- Fleets reconcile on create, update, resume, a periodic re-check, and whenever their
  RayService changes (KubeRay writes its status there).
- Policies reconcile (fit when needed) on create, update, resume and a periodic re-check
  (which notices changed calibration data); then every fleet that references the policy is
  reconciled, found through an in-memory index.
- Deleting a fleet deletes its children (a finalizer; ownerReferences do the same where a
  garbage collector runs).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf

from shoal.api.v1alpha1 import GROUP, VERSION
from shoal.operator import credentials
from shoal.operator.autoscaler import AutoscalerRuntime, autoscale_fleet, runtime
from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import delete_fleet_children, reconcile_fleet
from shoal.operator.gateway import KubeGateway
from shoal.operator.metrics import FITS, observed
from shoal.operator.policies import reconcile_policy
from shoal.planning import names

log = logging.getLogger(__name__)
FLEETS, POLICIES = "modelfleets", "routingpolicies"
#: Interval of the periodic re-check; a kopf decorator needs it when this module is imported.
RESYNC_SECONDS = float(os.environ.get("SHOAL_RESYNC_SECONDS", "30"))
#: Interval of the autoscaler's evaluations (SHOAL_AUTOSCALER_INTERVAL_SECONDS), likewise.
AUTOSCALER_SECONDS = OperatorConfig.from_env().autoscaler_interval_seconds


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf connects with the same credentials as the operator's own client."""
    return credentials.connection_info(
        credentials.api_client(), trust_env=settings.networking.trust_env
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's state under shoal.dev annotations; events at info level; our config in memo."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    # Recover quickly from API outages: short watch timeouts, quick reconnects.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 70
    settings.watching.reconnect_backoff = 1.0
    settings.networking.error_backoffs = [1, 2, 5, 10]
    config = OperatorConfig.from_env()
    memo.config = config
    memo.gateway = KubeGateway(credentials.api_client(), timeout=config.api_timeout_seconds)
    # Operator-wide, before any object's memo is copied from this one (see runtime()).
    memo.autoscaler = AutoscalerRuntime.from_config(config)


@kopf.index(GROUP, VERSION, FLEETS)
def fleets_by_policy(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> Any:
    """(namespace, policy name) -> names of the fleets that reference the policy."""
    return {(namespace, (spec.get("routingPolicyRef") or {}).get("name")): name}


def _being_deleted(fleet: dict[str, Any]) -> bool:
    return bool(fleet["metadata"].get("deletionTimestamp"))


def _reconcile_fleet(body: Any, memo: kopf.Memo) -> None:
    # Serialised with the autoscaler and the finalizer, on the fleet as it is now: a fleet
    # being deleted belongs to the finalizer (reconciling it would re-create its children).
    with runtime(memo).fleet_lock(memo.gateway, body) as fresh:
        if fresh is None or _being_deleted(fresh):
            return
        with observed("ModelFleet"):
            reconcile_fleet(memo.gateway, memo.config, fresh, _now())


@kopf.on.resume(GROUP, VERSION, FLEETS)
@kopf.on.create(GROUP, VERSION, FLEETS)
@kopf.on.update(GROUP, VERSION, FLEETS)
def fleet_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile a fleet whose spec is new or changed, or that the operator resumes."""
    _reconcile_fleet(body, memo)


@kopf.timer(GROUP, VERSION, FLEETS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def fleet_resync(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Periodic level-based re-check (drift, missed events, dependencies that appeared)."""
    try:
        _reconcile_fleet(body, memo)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        logger.info(f"fleet not reconciled yet: {exc}")


@kopf.timer(GROUP, VERSION, FLEETS, interval=AUTOSCALER_SECONDS, initial_delay=AUTOSCALER_SECONDS)
def fleet_autoscale(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Shoal's autoscaler: evaluate the fleet; persist, apply or only report the decision."""
    rt = runtime(memo)
    with rt.fleet_lock(memo.gateway, body) as fresh:
        if fresh is None or _being_deleted(fresh):
            return
        try:
            autoscale_fleet(memo.gateway, memo.config, rt.source, fresh, _now())
        except (kopf.PermanentError, kopf.TemporaryError) as exc:
            logger.info(f"fleet not autoscaled this time: {exc}")


@kopf.on.delete(GROUP, VERSION, FLEETS)
def fleet_deleted(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Delete the fleet's children before the fleet goes (after any reconcile in flight)."""
    with runtime(memo).fleet_lock(memo.gateway, body):
        gone = delete_fleet_children(memo.gateway, body)
    logger.info(f"deleted {', '.join(gone) or 'no children'}")


@kopf.on.event("ray.io", "v1", "rayservices", labels={names.FLEET_LABEL: kopf.PRESENT})
def rayservice_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """KubeRay changed a fleet's RayService (usually its status): refresh the fleet."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    fleet = {
        "metadata": {
            "namespace": body.metadata.namespace,
            "name": body.metadata.labels[names.FLEET_LABEL],
        }
    }
    try:
        _reconcile_fleet(fleet, memo)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        logger.info(f"fleet not reconciled yet: {exc}")


def _reconcile_policy(body: Any, memo: kopf.Memo, index: kopf.Index[Any, Any], logger: Any) -> None:
    try:
        with observed("RoutingPolicy"):
            outcome = reconcile_policy(memo.gateway, memo.config, body, _now())
        if outcome.fitted:
            FITS.labels("ok").inc()
    finally:
        # Fleets follow their policy whatever happened to it (fitted, failed, unchanged).
        ns, name = body["metadata"].get("namespace"), body["metadata"]["name"]
        for fleet_name in list(index.get((ns, name), [])):  # the index changes meanwhile
            try:
                _reconcile_fleet({"metadata": {"namespace": ns, "name": fleet_name}}, memo)
            except (kopf.PermanentError, kopf.TemporaryError) as exc:
                logger.info(f"fleet {fleet_name} not reconciled yet: {exc}")


@kopf.on.resume(GROUP, VERSION, POLICIES)
@kopf.on.create(GROUP, VERSION, POLICIES)
@kopf.on.update(GROUP, VERSION, POLICIES)
def policy_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Fit the policy's router if its spec or data changed; then refresh its fleets."""
    _reconcile_policy(body, memo, kwargs["fleets_by_policy"], logger)


@kopf.timer(GROUP, VERSION, POLICIES, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def policy_resync(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Periodic re-check: notices changed calibration data (the fingerprint changes)."""
    try:
        _reconcile_policy(body, memo, kwargs["fleets_by_policy"], logger)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        FITS.labels("failed").inc()
        logger.info(f"policy not reconciled: {exc}")


@kopf.on.delete(GROUP, VERSION, POLICIES)
def policy_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Delete the policy's fitted artifact with it."""
    memo.gateway.delete(
        "v1",
        "ConfigMap",
        body.metadata.namespace or "default",
        names.policy_artifact_configmap_name(body.metadata.name),
    )
