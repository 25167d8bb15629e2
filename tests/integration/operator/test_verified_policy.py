"""A fleet is rendered only with the embedder endpoint and API key Secret that the operator
verified for its routing policy's current generation.

Against the real API server, with the project's OpenAI-compatible embeddings server on
loopback (which records the Authorization headers it receives). Each test first serves a
fleet with a verified policy, then edits the policy in a way the operator cannot verify
(a Secret it may not read, one that does not exist, calibration it cannot read together with
a new endpoint, a new endpoint not reconciled yet) and checks that the fleet's RayService
still names only the verified endpoint and Secret, and that the fleet says why: Degraded and
Ready with reason ``RoutingPolicyNotVerified`` (or waiting for the policy), and a Warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest

from shoal.contract.serve import EMBEDDER_API_KEY_ENV
from shoal.devtools.testing.embeddings import EmbeddingsEndpoint, serve_embeddings
from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import FleetWaiting, reconcile_fleet
from shoal.operator.gateway import KubeGateway
from shoal.operator.policies import reconcile_policy
from shoal.operator.sources import ALLOWED_HOSTS_ANNOTATION, SECRET_LABEL
from shoal.planning.verification import POLICY_NOT_VERIFIED
from tests.integration.operator.conftest import Cluster, calibration_configmap, fleet, policy
from tests.integration.operator.test_reconcile_direct import (
    READ_SHOAL,
    WRITE_STATUS,
    restricted_gateway,
)

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)
KEY = "k-91fe"
#: A host nobody allowed, that the fleet must never be rendered with.
ELSEWHERE = "http://embed.elsewhere.example:8080/v1"


def _secret(name: str = "embed") -> dict[str, Any]:
    meta = {"name": name, "labels": {SECRET_LABEL: "true"},
            "annotations": {ALLOWED_HOSTS_ANNOTATION: "127.0.0.1"}}  # fmt: skip
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"token": KEY}}


def _policy(endpoint: str, secret: str = "embed", **spec: Any) -> dict[str, Any]:
    embedder = {"type": "openai", "endpoint": endpoint, "model": "hash",
                "apiKeySecretRef": {"name": secret, "key": "token"}}  # fmt: skip
    return policy(embedder=embedder, **spec)


@pytest.fixture()
def served(cluster: Cluster) -> Iterator[tuple[EmbeddingsEndpoint, KubeGateway]]:
    """A fleet rendered with a verified policy (endpoint on loopback, Secret ``embed``)."""
    with serve_embeddings(api_key=KEY) as endpoint:
        cluster.apply(_secret(), calibration_configmap(), _policy(endpoint.url), fleet())
        gw = KubeGateway(cluster.cp.api_client())
        assert reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW).fitted
        reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
        assert endpoint.url in cluster.get("rayservice", "f")["spec"]["serveConfigV2"]  # type: ignore[index]
        assert _rendered(cluster) == ("verified", "embed")
        yield endpoint, gw


def _rendered(cluster: Cluster) -> tuple[str, str]:
    """The embedder endpoint (the verified one, or ``ELSEWHERE``) and the key's Secret that
    the fleet's RayService names."""
    rs = cluster.get("rayservice", "f")
    assert rs is not None
    config = rs["spec"]["rayClusterConfig"]
    groups = [config["headGroupSpec"], *config.get("workerGroupSpecs", [])]
    refs = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for group in groups
        for c in group["template"]["spec"]["containers"]
        for env in c.get("env", [])
        if env["name"] == EMBEDDER_API_KEY_ENV
    }
    assert len(refs) == 1, refs
    endpoint = ELSEWHERE if ELSEWHERE in rs["spec"]["serveConfigV2"] else "verified"
    return endpoint, refs.pop()


def _blocked(cluster: Cluster, gw: KubeGateway, reason: str = POLICY_NOT_VERIFIED) -> None:
    with pytest.raises(FleetWaiting):
        reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    ready = cluster.condition("fleet", "f", "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", reason), ready


def test_forbidden_secret_is_not_rendered(
    cluster: Cluster, served: tuple[EmbeddingsEndpoint, KubeGateway], caplog: Any
) -> None:
    endpoint, gw = served
    cluster.apply(_secret("other"), _policy(endpoint.url, secret="other"))
    # The operator's credentials cannot read Secrets (the chart's default RBAC).
    configmaps = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
    narrow = restricted_gateway(cluster, [READ_SHOAL, WRITE_STATUS, configmaps])
    with pytest.raises(kopf.PermanentError, match="may not read Secret 'other'"):
        reconcile_policy(narrow, OperatorConfig(), cluster.get("rpol", "p"), NOW)
    fitted = cluster.condition("rpol", "p", "Fitted")
    assert fitted is not None and (fitted["status"], fitted["reason"]) == ("False", "Forbidden")
    with caplog.at_level(logging.WARNING, logger="shoal.operator.events"):
        _blocked(cluster, gw)
    assert any(POLICY_NOT_VERIFIED in r.getMessage() for r in caplog.records)  # the Warning
    degraded = cluster.condition("fleet", "f", "Degraded")
    assert degraded is not None and degraded["reason"] == POLICY_NOT_VERIFIED
    assert "Forbidden" in degraded["message"]
    assert _rendered(cluster) == ("verified", "embed")


def test_missing_secret_is_not_rendered(
    cluster: Cluster, served: tuple[EmbeddingsEndpoint, KubeGateway]
) -> None:
    endpoint, gw = served
    cluster.apply(_policy(endpoint.url, secret="missing"))
    with pytest.raises(kopf.PermanentError, match="not found"):
        reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW)
    _blocked(cluster, gw)
    assert _rendered(cluster) == ("verified", "embed")


def test_unreadable_calibration_with_a_new_endpoint_is_not_rendered(
    cluster: Cluster, served: tuple[EmbeddingsEndpoint, KubeGateway]
) -> None:
    _, gw = served
    gone = {"configMapRef": {"name": "no-such-calibration", "key": "calibration.jsonl"}}
    cluster.apply(_policy(ELSEWHERE, calibration=gone))
    with pytest.raises(kopf.TemporaryError):
        reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW)
    fitted = cluster.condition("rpol", "p", "Fitted")
    assert fitted is not None and fitted["reason"] == "CalibrationNotFound"
    _blocked(cluster, gw)
    assert _rendered(cluster) == ("verified", "embed")


def test_endpoint_change_waits_for_verification(
    cluster: Cluster, served: tuple[EmbeddingsEndpoint, KubeGateway]
) -> None:
    endpoint, gw = served
    cluster.apply(_policy(ELSEWHERE))
    # The fleet reconciles before the policy does (any event may come first): it waits.
    _blocked(cluster, gw, reason="WaitingForRouter")
    router = cluster.condition("fleet", "f", "RouterReady")
    assert router is not None and "verify generation" in router["message"], router
    assert _rendered(cluster) == ("verified", "embed")
    # The policy's reconcile refuses the host the Secret does not allow; still nothing new.
    with pytest.raises(kopf.PermanentError, match=r"not to"):
        reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW)
    _blocked(cluster, gw)
    assert _rendered(cluster) == ("verified", "embed")
    assert set(endpoint.authorizations) <= {f"Bearer {KEY}"}


def test_metadata_endpoint_is_refused_before_any_request(
    cluster: Cluster, served: tuple[EmbeddingsEndpoint, KubeGateway]
) -> None:
    """An embedder endpoint at the cloud metadata address: refused outright (no request is
    sent: nothing there would answer in this test anyway), and the fleet is not rendered."""
    _, gw = served
    cluster.apply(_policy("http://169.254.169.254/v1"))
    with pytest.raises(kopf.PermanentError, match="metadata"):
        reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW)
    fitted = cluster.condition("rpol", "p", "Fitted")
    assert fitted is not None and fitted["reason"] == "DestinationRefused"
    _blocked(cluster, gw)
    assert _rendered(cluster) == ("verified", "embed")


def test_outbound_allowlist_refuses_other_hosts(cluster: Cluster) -> None:
    cluster.apply(calibration_configmap(), policy(calibration={"uri": "http://127.0.0.1:9/c"}))
    gw = KubeGateway(cluster.cp.api_client())
    config = OperatorConfig(outbound_allow="calibration.example, 10.0.0.0/8")
    with pytest.raises(kopf.PermanentError, match="allowlist"):
        reconcile_policy(gw, config, cluster.get("rpol", "p"), NOW)
    fitted = cluster.condition("rpol", "p", "Fitted")
    assert fitted is not None and fitted["reason"] == "DestinationNotAllowed"


def test_an_edit_that_keeps_the_embedder_is_rendered_at_once(
    cluster: Cluster, served: tuple[EmbeddingsEndpoint, KubeGateway]
) -> None:
    """An edit that leaves the embedder and its key as verified (alpha here) is rendered
    before the policy's reconcile gets to it, as it always was: no fleet waits for a refit
    of a change that sends nothing anywhere new."""
    endpoint, gw = served
    cluster.apply(_policy(endpoint.url, alpha="0.3"))
    reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), NOW)
    rs = cluster.get("rayservice", "f")
    assert rs is not None and "0.3" in rs["spec"]["serveConfigV2"]
    assert _rendered(cluster) == ("verified", "embed")
