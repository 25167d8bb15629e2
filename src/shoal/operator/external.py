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
        ref = ext.api_key_secret_ref
        try:
            secret = gw.get("v1", "Secret", ns, ref.name)
        except Forbidden:
            refused[m.name] = SpecProblem(
                FORBIDDEN,
                f"may not read Secret {ref.name!r} in {ns} (model {m.name}'s API key): grant "
                "get on secrets (Helm value rbac.embedderSecrets=true)",
            )
            continue
        if secret is None:
            refused[m.name] = SpecProblem(
                NOT_FOUND, f"Secret {ref.name!r} (model {m.name}'s API key) not found in {ns}"
            )
            continue
        problem = sources.secret_grant_problem(
            secret,
            ext.base_url,
            label=MODEL_KEY_LABEL,
            reasons=(NOT_MARKED, HOST_NOT_ALLOWED),
            what=f"model {m.name}'s endpoint",
        )
        if problem is not None:
            refused[m.name] = problem
        elif ref.key not in ((secret.get("data") or {}) | (secret.get("stringData") or {})):
            refused[m.name] = SpecProblem(
                NOT_FOUND, f"Secret {ref.name!r} in {ns} has no key {ref.key!r} (model {m.name})"
            )
        else:
            granted.add(m.name)
    return KeyGrants(frozenset(granted), refused)


def report_refusals(body: Any, fleet: ModelFleet, grants: KeyGrants) -> None:
    """A Warning event for each refusal that the fleet's status does not show yet."""
    before = {s.name: s.state for s in (fleet.status.models if fleet.status else [])}
    for model, problem in sorted(grants.refused.items()):
        if before.get(model) != problem.reason:
            events.post(body, warning=True, reason=problem.reason, message=problem.message)
