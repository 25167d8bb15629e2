"""Reconcile one RoutingPolicy: fit its router when the policy or its data changed.

The fit's inputs (the fitting parameters and the calibration bytes) are hashed into a
fingerprint stored on the artifact ConfigMap. A reconcile whose fingerprint matches the stored
one does no work, so fitting happens when the policy or its data changes, not on every
reconcile or restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kopf

from shoal.api.v1alpha1 import API_VERSION, RoutingPolicy
from shoal.api.v1alpha1.policy import RouterArtifactStatus
from shoal.operator import events, sources
from shoal.operator.config import OperatorConfig
from shoal.operator.destinations import Allowlist, destination_problem
from shoal.operator.gateway import WRITE_ERRORS, Forbidden, KubeGateway
from shoal.operator.ownership import NameTaken, owned_by
from shoal.planning import names
from shoal.planning.artifacts import FINGERPRINT_ANNOTATION, artifact_configmap
from shoal.planning.status import SpecProblem, policy_status

log = logging.getLogger(__name__)


class CalibrationUnavailable(Exception):
    """The calibration data cannot be read (yet)."""

    def __init__(self, problem: SpecProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@dataclass(frozen=True)
class PolicyOutcome:
    """What one reconcile did."""

    fitted: bool
    artifact: RouterArtifactStatus | None


def fit_fingerprint(policy: RoutingPolicy, data: bytes) -> str:
    """Identity of a fit: the parameters that shape it and the calibration bytes."""
    spec = policy.spec
    params = {
        "embedder": spec.embedder.to_k8s(),
        "clusters": spec.clusters,
        "topP": spec.top_p,
        "temperature": spec.temperature,
        "alpha": spec.alpha,
        "seed": spec.seed,
    }
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    h.update(hashlib.sha256(data).digest())
    return h.hexdigest()[:32]


def read_calibration(gw: KubeGateway, policy: RoutingPolicy) -> tuple[bytes, str]:
    """The calibration bytes and a name for them (used in error messages)."""
    cal = policy.spec.calibration
    ns = policy.metadata.namespace or "default"
    assert cal is not None  # the API server requires it for the cluster strategy
    if cal.config_map_ref is not None:
        ref = cal.config_map_ref
        cm = gw.get("v1", "ConfigMap", ns, ref.name)
        if cm is None:
            raise CalibrationUnavailable(
                SpecProblem("CalibrationNotFound", f"ConfigMap {ref.name!r} not found in {ns}")
            )
        if ref.key in (cm.get("data") or {}):
            return cm["data"][ref.key].encode(), ref.key
        if ref.key in (cm.get("binaryData") or {}):
            return base64.b64decode(cm["binaryData"][ref.key]), ref.key
        raise CalibrationUnavailable(
            SpecProblem("CalibrationNotFound", f"ConfigMap {ref.name!r} has no key {ref.key!r}")
        )
    uri = cal.uri or ""
    if not uri.startswith(("http://", "https://")):
        raise CalibrationUnavailable(
            SpecProblem(
                "CalibrationSourceUnsupported",
                f"{uri.split('://')[0]}:// calibration sources are not readable by this "
                "operator; use an http(s) URI or a ConfigMap",
            )
        )
    try:
        data = sources.fetch_calibration(uri)
    except sources.SourceRefused as exc:
        raise CalibrationUnavailable(exc.problem) from exc
    return data, uri.rsplit("/", 1)[-1]


def destinations_problem(policy: RoutingPolicy, config: OperatorConfig) -> SpecProblem | None:
    """Why the operator may not call the policy's calibration URI or embedder endpoint
    (:mod:`shoal.operator.destinations`); None: it may call both."""
    allow = Allowlist.parse(config.outbound_allow)
    cal = policy.spec.calibration
    urls = [cal.uri] if cal is not None and cal.uri else []
    if policy.spec.embedder.endpoint:
        urls.append(policy.spec.embedder.endpoint)
    for url in urls:
        if url.startswith(("http://", "https://")):
            problem = destination_problem(url, allow)
            if problem is not None:
                return problem
    return None


def read_api_key(gw: KubeGateway, policy: RoutingPolicy) -> str | None:
    """The ``openai`` embedder's API key from the policy's Secret (None when it names none),
    used only where the Secret's owner allows it for the embedder's host
    (:func:`shoal.operator.sources.secret_grant_problem`)."""
    ref = policy.spec.embedder.api_key_secret_ref
    if ref is None:
        return None
    ns = policy.metadata.namespace or "default"
    try:
        secret = gw.get("v1", "Secret", ns, ref.name)
    except Forbidden as exc:
        raise CalibrationUnavailable(
            SpecProblem(
                exc.reason,
                f"may not read Secret {ref.name!r} in {ns} (the embedder's API key): grant get "
                "on secrets (Helm value rbac.embedderSecrets=true)",
            )
        ) from exc
    if secret is None:
        raise CalibrationUnavailable(
            SpecProblem("EmbedderSecretNotFound", f"Secret {ref.name!r} not found in {ns}")
        )
    refused = sources.secret_grant_problem(secret, policy.spec.embedder.endpoint or "")
    if refused is not None:
        raise CalibrationUnavailable(refused)
    value = (secret.get("data") or {}).get(ref.key)
    if value is None:
        raise CalibrationUnavailable(
            SpecProblem("EmbedderSecretNotFound", f"Secret {ref.name!r} has no key {ref.key!r}")
        )
    return base64.b64decode(value).decode().strip()


def fit(
    policy: RoutingPolicy, data: bytes, source: str, now: datetime, api_key: str | None = None
) -> bytes:
    """Fit the policy's router on calibration bytes; SpecProblem-carrying errors on bad data."""
    from shoal.routing import (
        CalibrationError,
        EmbedderUnavailable,
        fit_policy_router,
        parse_calibration,
    )

    try:
        samples = parse_calibration(data, source=source)
        return fit_policy_router(policy.spec, samples, api_key=api_key, fitted_at=now)
    except CalibrationError as exc:
        raise CalibrationUnavailable(SpecProblem("CalibrationInvalid", str(exc))) from exc
    except EmbedderUnavailable as exc:
        raise CalibrationUnavailable(SpecProblem("EmbedderUnavailable", str(exc))) from exc


def artifact_status(cm_name: str, data: bytes) -> RouterArtifactStatus:
    """What the policy's status says of the artifact ``data`` stored in ``cm_name``."""
    from shoal.routing import read_artifact_info

    info = read_artifact_info(data)
    return RouterArtifactStatus(
        config_map=cm_name,
        checksum=info.checksum,
        format_version=info.format_version,
        fitted_at=info.fitted_at,
        samples=info.samples,
        clusters=info.clusters,
        models=list(info.models),
        version=info.version,
        refit_at=info.refit_at,
    )


def reconcile_policy(
    gw: KubeGateway, config: OperatorConfig, body: Any, now: datetime
) -> PolicyOutcome:
    """Fit the router if needed and report the policy's status."""
    policy = RoutingPolicy.model_validate(dict(body))
    ns, name = policy.metadata.namespace or "default", policy.metadata.name
    previous = policy.status

    def report(artifact: RouterArtifactStatus | None, problem: SpecProblem | None) -> None:
        status = policy_status(
            policy, artifact=artifact, fit_error=problem, previous=previous, now=now
        )
        new = status.model_dump(mode="json", by_alias=True)
        old = previous.model_dump(mode="json", by_alias=True) if previous else None
        if new != old:
            gw.patch_status(API_VERSION, RoutingPolicy.KIND, ns, name, new)

    if policy.spec.strategy == "static":
        report(None, None)
        return PolicyOutcome(fitted=False, artifact=None)

    kept = previous.artifact if previous else None
    destination = destinations_problem(policy, config)
    if destination is not None:
        report(kept, destination)
        events.post(body, warning=True, reason=destination.reason, message=destination.message)
        raise kopf.PermanentError(destination.message)
    try:
        data, source = read_calibration(gw, policy)
    except CalibrationUnavailable as exc:
        report(kept, exc.problem)
        events.post(body, warning=True, reason=exc.problem.reason, message=exc.problem.message)
        raise kopf.TemporaryError(exc.problem.message, delay=config.retry_seconds) from exc

    # The embedder's key, checked on every reconcile, not only at fits: where the Secret's
    # owner withdraws it (or the policy's host), the policy's artifact is withdrawn too, so
    # its fleets are not rendered with the key for a host nobody allowed.
    try:
        api_key = read_api_key(gw, policy)
    except CalibrationUnavailable as exc:
        refused = exc.problem.reason in sources.REFUSALS
        report(None if refused else kept, exc.problem)
        events.post(body, warning=True, reason=exc.problem.reason, message=exc.problem.message)
        raise kopf.PermanentError(exc.problem.message) from exc

    fp = fit_fingerprint(policy, data)
    cm_name = names.policy_artifact_configmap_name(name)
    existing = gw.get("v1", "ConfigMap", ns, cm_name)
    if existing is not None and not owned_by(
        existing, RoutingPolicy.KIND, name, policy.metadata.uid
    ):
        problem = SpecProblem(
            NameTaken.reason,
            f"ConfigMap {cm_name!r} exists and is not this policy's (no ownerReference to "
            f"RoutingPolicy {name!r}); the operator neither changes nor deletes it: rename or "
            "remove it, or rename the policy",
        )
        report(None, problem)
        events.post(body, warning=True, reason=problem.reason, message=problem.message)
        raise NameTaken(problem.message, delay=config.retry_seconds)
    annotations = ((existing or {}).get("metadata") or {}).get("annotations") or {}
    if existing and annotations.get(FINGERPRINT_ANNOTATION) == fp:
        blob = base64.b64decode((existing.get("binaryData") or {}).get(names.ARTIFACT_KEY, ""))
        artifact = artifact_status(cm_name, blob)
        report(artifact, None)
        return PolicyOutcome(fitted=False, artifact=artifact)

    if kept is None:
        report(None, None)  # Fitting...
    try:
        blob = fit(policy, data, source, now, api_key=api_key)
    except CalibrationUnavailable as exc:
        report(kept, exc.problem)
        events.post(body, warning=True, reason=exc.problem.reason, message=exc.problem.message)
        raise kopf.PermanentError(exc.problem.message) from exc
    artifact = artifact_status(cm_name, blob)
    try:
        gw.apply(artifact_configmap(policy, blob, fp, artifact.checksum))
    except WRITE_ERRORS as exc:
        problem = SpecProblem(exc.reason, f"cannot store the router artifact: {exc}")
        report(kept, problem)
        events.post(body, warning=True, reason=problem.reason, message=problem.message)
        raise
    report(artifact, None)
    events.post(
        body,
        warning=False,
        reason="Fitted",
        message=f"router fitted on {artifact.samples} samples: {artifact.clusters} clusters, "
        f"{len(artifact.models)} models ({artifact.checksum[:19]})",
    )
    return PolicyOutcome(fitted=True, artifact=artifact)
