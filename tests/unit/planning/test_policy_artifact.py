"""The policy's artifact ConfigMap: the fitted bytes, owned by the policy, annotated."""

from __future__ import annotations

import base64

from shoal.api.v1alpha1 import RoutingPolicy
from shoal.planning import names
from shoal.planning.artifacts import (
    EMBEDDER_ANNOTATION,
    FINGERPRINT_ANNOTATION,
    artifact_configmap,
    embedder_digest,
)


def _policy() -> RoutingPolicy:
    return RoutingPolicy.model_validate({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
        "spec": {"calibration": {"configMapRef": {"name": "cal", "key": "k"}}},
    })  # fmt: skip


def test_holds_the_bytes_under_the_policys_name() -> None:
    cm = artifact_configmap(_policy(), b"\x00router", "fp", "sha256:ab")
    assert (cm["apiVersion"], cm["kind"]) == ("v1", "ConfigMap")
    assert (
        cm["metadata"]["name"] == "p-router-artifact" == names.policy_artifact_configmap_name("p")
    )
    assert cm["metadata"]["namespace"] == "ns"
    assert base64.b64decode(cm["binaryData"][names.ARTIFACT_KEY]) == b"\x00router"


def test_annotated_with_fingerprint_and_checksum_and_labelled() -> None:
    meta = artifact_configmap(_policy(), b"x", "fp-1", "sha256:cd")["metadata"]
    assert meta["annotations"] == {FINGERPRINT_ANNOTATION: "fp-1",
                                   names.ARTIFACT_ANNOTATION: "sha256:cd",
                                   EMBEDDER_ANNOTATION: embedder_digest(_policy())}  # fmt: skip
    assert meta["labels"][names.POLICY_LABEL] == "p"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "shoal"


def test_owned_by_the_policy() -> None:
    (owner,) = artifact_configmap(_policy(), b"x", "fp", "c")["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "shoal.dev/v1alpha1", "kind": "RoutingPolicy", "name": "p",
                     "uid": "u-1", "controller": True, "blockOwnerDeletion": True}  # fmt: skip
