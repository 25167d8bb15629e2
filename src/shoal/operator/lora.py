"""Which models' LoRA store credentials the operator lets their replicas read.

Called by :func:`shoal.operator.fleets.reconcile_fleet` on every reconcile. A vLLM model's
``loraStore.credentialsSecretRef`` names a Secret key holding credentials for the object store
its adapters live in. Anyone who may write a ModelFleet could otherwise have the fleet's pods
read any Secret of the namespace and send it to any host, so the Secret is mounted only when
its owner labelled it :data:`~shoal.api.v1alpha1.fleet.LORA_CREDENTIALS_LABEL` ``"true"`` and
listed the store's host (the endpoint's, or AWS S3's) in the annotation
``shoal.dev/allowed-hosts``: the rule embedder and external-model keys follow
(:func:`shoal.operator.sources.secret_grant_problem`). The Secret's value is never decoded
here; it reaches the pods as a mounted file (:func:`shoal.planning.lora.mount_lora_credentials`).

A refused Secret does not hold the fleet up: the base model serves, its adapters fail to
load (Ray Serve LLM answers that it cannot read them), the model's status state says why and a
Warning event says it in words (on each change).
"""

from __future__ import annotations

from shoal.api.v1alpha1 import ModelFleet
from shoal.api.v1alpha1.fleet import LORA_CREDENTIALS_LABEL
from shoal.operator.external import KeyGrants, secret_key_problem
from shoal.operator.gateway import KubeGateway
from shoal.planning.status import SpecProblem

#: The problems' reason words (a model's status state while its credentials are refused).
NOT_MARKED = "LoraCredentialsNotMarked"
HOST_NOT_ALLOWED = "LoraCredentialsHostNotAllowed"
NOT_FOUND = "LoraCredentialsSecretNotFound"
FORBIDDEN = "LoraCredentialsSecretForbidden"


def credential_grants(gw: KubeGateway, fleet: ModelFleet) -> KeyGrants:
    """Read the Secrets (metadata only) the fleet's LoRA stores name, and judge them."""
    ns = fleet.metadata.namespace or "default"
    granted: set[str] = set()
    refused: dict[str, SpecProblem] = {}
    for m in fleet.spec.models:
        store = m.lora_store
        ref = store.credentials_secret_ref if store is not None else None
        if store is None or ref is None or not m.lora_adapters:
            continue
        problem = secret_key_problem(
            gw,
            ns,
            ref,
            f"https://{store.host}",
            label=LORA_CREDENTIALS_LABEL,
            reasons=(NOT_MARKED, HOST_NOT_ALLOWED, NOT_FOUND, FORBIDDEN),
            use=f"model {m.name}'s LoRA store credentials",
            what=f"model {m.name}'s LoRA store",
        )
        if problem is None:
            granted.add(m.name)
        else:
            refused[m.name] = problem
    return KeyGrants(frozenset(granted), refused)
