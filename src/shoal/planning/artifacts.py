"""The RoutingPolicy's fitted-artifact ConfigMap, as a pure function of the policy and the fit.

The operator fits a policy's router and stores the bytes in one ConfigMap per policy, owned
by the policy (deleted with it) and annotated with the fit's fingerprint (so a reconcile with
the same inputs does no work) and the artifact's checksum.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from shoal.api.v1alpha1 import API_VERSION, GROUP, RoutingPolicy
from shoal.planning import names

#: Annotation on the artifact ConfigMap: identity of the fit's inputs.
FINGERPRINT_ANNOTATION = f"{GROUP}/fit-fingerprint"
#: Annotation on the artifact ConfigMap: which embedder settings (type, endpoint, model, key
#: Secret) the artifact was fitted, and those settings verified, with.
EMBEDDER_ANNOTATION = f"{GROUP}/embedder"


def embedder_digest(policy: RoutingPolicy) -> str:
    """Identity of the policy's embedder settings (what the fleet's ingress calls, with what
    key)."""
    raw = json.dumps(policy.spec.embedder.to_k8s(), sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def policy_owner_reference(policy: RoutingPolicy) -> dict[str, Any]:
    """ownerReference that ties the artifact ConfigMap to its policy."""
    return {
        "apiVersion": API_VERSION,
        "kind": RoutingPolicy.KIND,
        "name": policy.metadata.name,
        "uid": policy.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def artifact_configmap(
    policy: RoutingPolicy, data: bytes, fingerprint: str, checksum: str
) -> dict[str, Any]:
    """The ConfigMap that holds ``data``, the router fitted for ``policy``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.policy_artifact_configmap_name(policy.metadata.name),
            "namespace": policy.metadata.namespace,
            "labels": {**names.MANAGED_BY, names.POLICY_LABEL: policy.metadata.name},
            "annotations": {
                FINGERPRINT_ANNOTATION: fingerprint,
                names.ARTIFACT_ANNOTATION: checksum,
                EMBEDDER_ANNOTATION: embedder_digest(policy),
            },
            "ownerReferences": [policy_owner_reference(policy)],
        },
        "binaryData": {names.ARTIFACT_KEY: base64.b64encode(data).decode("ascii")},
    }
