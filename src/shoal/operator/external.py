"""Which external models' API keys the operator lets a fleet's ingress send.

Called by :func:`shoal.operator.fleets.reconcile_fleet` on every reconcile. A model served
outside the fleet (``engine: openai``) may name a Secret key (``external.apiKeySecretRef``).
Anyone who may write a ModelFleet could otherwise have the fleet send any Secret of the
namespace to any host, so the key is used only when the Secret's owner labelled it
:data:`~shoal.api.v1alpha1.external.MODEL_KEY_LABEL` ``"true"`` and listed the endpoint's host
in the annotation ``shoal.dev/allowed-hosts`` (the rule embedder keys follow,
:func:`shoal.operator.sources.secret_grant_problem`). The Secret's value is never decoded here
(its labels, annotations and key names decide); the key reaches the pods as a mounted file
(:func:`shoal.planning.external.mount_model_keys`).

A refused key does not hold the fleet up: the model's status state says why, a Warning event
says it in words (on each change), and the ingress falls back from that model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from shoal.api.v1alpha1 import ModelFleet
from shoal.api.v1alpha1.external import MODEL_KEY_LABEL
from shoal.api.v1alpha1.policy import SecretKeyRef
from shoal.operator import events, sources
from shoal.operator.gateway import Forbidden, KubeGateway
from shoal.planning.status import SpecProblem

log = logging.getLogger(__name__)

#: The problems' reason words (a model's status state while its key is refused).
NOT_MARKED = "ModelKeyNotMarked"
HOST_NOT_ALLOWED = "ModelKeyHostNotAllowed"
NOT_FOUND = "ModelKeySecretNotFound"
FORBIDDEN = "ModelKeySecretForbidden"


@dataclass(frozen=True)
class KeyGrants:
    """The external models whose keys may be mounted, and why the others' may not."""

    granted: frozenset[str] = frozenset()
    refused: dict[str, SpecProblem] = field(default_factory=dict)

    @property
    def refusal_reasons(self) -> dict[str, str]:
        return {m: p.reason for m, p in self.refused.items()}


def key_grants(gw: KubeGateway, fleet: ModelFleet) -> KeyGrants:
    """Read the Secrets (metadata only) the fleet's external models name, and judge them."""
    ns = fleet.metadata.namespace or "default"
    granted: set[str] = set()
    refused: dict[str, SpecProblem] = {}
    for m in fleet.spec.external_models():
        ext = m.external
        if ext is None or ext.api_key_secret_ref is None:
            continue
        problem = secret_key_problem(
            gw,
            ns,
            ext.api_key_secret_ref,
            ext.base_url,
            label=MODEL_KEY_LABEL,
            reasons=(NOT_MARKED, HOST_NOT_ALLOWED, NOT_FOUND, FORBIDDEN),
            use=f"model {m.name}'s API key",
            what=f"model {m.name}'s endpoint",
        )
        if problem is None:
            granted.add(m.name)
        else:
            refused[m.name] = problem
    return KeyGrants(frozenset(granted), refused)


def secret_key_problem(
    gw: KubeGateway,
    ns: str,
    ref: SecretKeyRef,
    endpoint: str,
    *,
    label: str,
    reasons: tuple[str, str, str, str],
    use: str,
    what: str,
) -> SpecProblem | None:
    """Why a fleet may not use the Secret key ``ref`` of namespace ``ns`` (``use`` names it
    in messages) towards ``endpoint`` (``what``), or None when it may: the operator may read
    the Secret's metadata, the Secret exists, its owner marked it with ``label`` and allowed
    the endpoint's host (:func:`shoal.operator.sources.secret_grant_problem`), and it holds
    the key. ``reasons``: the words for not marked, host not allowed, not found, forbidden.
    The Secret's values are never decoded."""
    not_marked, host_not_allowed, not_found, forbidden = reasons
    try:
        secret = gw.get("v1", "Secret", ns, ref.name)
    except Forbidden:
        return SpecProblem(
            forbidden,
            f"may not read Secret {ref.name!r} in {ns} ({use}): grant get on secrets (Helm "
            "value rbac.embedderSecrets=true)",
        )
    if secret is None:
        return SpecProblem(not_found, f"Secret {ref.name!r} ({use}) not found in {ns}")
    problem = sources.secret_grant_problem(
        secret, endpoint, label=label, reasons=(not_marked, host_not_allowed), what=what
    )
    if problem is not None:
        return problem
    if ref.key not in ((secret.get("data") or {}) | (secret.get("stringData") or {})):
        return SpecProblem(not_found, f"Secret {ref.name!r} in {ns} has no key {ref.key!r} ({use})")
    return None


def report_refusals(body: Any, fleet: ModelFleet, grants: KeyGrants) -> None:
    """A Warning event for each refusal that the fleet's status does not show yet."""
    before = {s.name: s.state for s in (fleet.status.models if fleet.status else [])}
    for model, problem in sorted(grants.refused.items()):
        if before.get(model) != problem.reason:
            events.post(body, warning=True, reason=problem.reason, message=problem.message)
