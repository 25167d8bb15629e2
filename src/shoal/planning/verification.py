"""Whether a fleet may be rendered with what its routing policy names (pure).

A cluster-strategy policy names an embedding endpoint and, optionally, a Secret whose key the
fleet's ingress sends there as a bearer token. The operator verifies them on every policy
reconcile (:func:`shoal.operator.policies.reconcile_policy`): the calibration data read, the
Secret readable, marked by its owner for Shoal and allowing the endpoint's host, and the
stored router fitted for exactly these settings (its fingerprint). Only then is the policy's
``Fitted`` condition True, set for the policy's generation; the artifact ConfigMap names the
embedder settings it was fitted and verified with (:data:`EMBEDDER_ANNOTATION`).

:func:`policy_gate` holds the fleet's reconcile (:mod:`shoal.operator.fleets`) to that: a
fleet is rendered only while ``Fitted`` is True for the policy's current generation, or, for
an edit not verified yet that leaves the embedder as it was (alpha, say), while it is True
and the artifact's embedder settings are the spec's. An edit of the endpoint or the Secret
that the operator has not verified yet, or any it could not verify (Forbidden, not found,
calibration unreadable), leaves the fleet's running objects as they were; the fleet says why
in its conditions (and, for a failure, a Warning event).
"""

from __future__ import annotations

from shoal.api.v1alpha1 import ConditionStatus, RoutingPolicy
from shoal.planning.artifacts import EMBEDDER_ANNOTATION, embedder_digest
from shoal.planning.conditions import condition
from shoal.planning.status import FITTED, SpecProblem

__all__ = ["EMBEDDER_ANNOTATION", "POLICY_NOT_VERIFIED", "policy_gate"]

#: Reason of the fleet's Degraded/Ready condition while its policy fails verification.
POLICY_NOT_VERIFIED = "RoutingPolicyNotVerified"


def policy_gate(
    policy: RoutingPolicy, artifact_embedder: str | None = None
) -> tuple[str | None, SpecProblem | None]:
    """``(None, None)``: the fleet may be rendered with this policy. ``(waiting, None)``: the
    policy's current generation is not verified yet (a fit or a reconcile is on its way).
    ``(None, problem)``: the operator could not verify it (the problem says why).
    ``artifact_embedder``: the artifact ConfigMap's :data:`EMBEDDER_ANNOTATION`."""
    if policy.spec.strategy != "cluster":
        return None, None  # no embedder, no key, nothing to send anywhere
    name, gen = policy.metadata.name, policy.metadata.generation
    fitted = condition(policy.status.conditions, FITTED) if policy.status else None
    unchanged = artifact_embedder is not None and artifact_embedder == embedder_digest(policy)
    if (
        fitted is not None
        and fitted.status == ConditionStatus.TRUE
        and fitted.observed_generation != gen
        and unchanged
    ):
        return None, None  # an edit that leaves the embedder and its key as verified
    if fitted is None or (gen is not None and fitted.observed_generation != gen):
        return (
            f"waiting for the operator to verify generation {gen} of routing policy {name!r} "
            "(its calibration, embedder endpoint and API key) and fit its router"
        ), None
    if fitted.status == ConditionStatus.TRUE:
        return None, None
    if fitted.reason == "Fitting":
        return "waiting for the routing policy's router to be fitted", None
    return None, SpecProblem(
        POLICY_NOT_VERIFIED,
        f"routing policy {name!r} (generation {gen}) is not verified: {fitted.reason}: "
        f"{fitted.message}; the fleet is not rendered with it until it is (what runs stays)",
    )
