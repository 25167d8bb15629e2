"""``shoal render`` prints what the operator applies: a fleet file rendered, then applied to
the real API server and reconciled by the operator's own reconciler; every rendered object
is there, with every rendered field as rendered (the API server adds defaults around them)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import reconcile_fleet
from shoal.operator.gateway import KubeGateway
from shoal.render import render_documents
from tests.integration.operator.conftest import Cluster, fleet, policy

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _missing(want: Any, have: Any, path: str = "") -> list[str]:
    """Where ``have`` lacks or differs from what ``want`` says (lists compared item by item)."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [f"{path}: {have!r} is not a map"]
        return [m for k, v in want.items() for m in _missing(v, have.get(k), f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return [f"{path}: {have!r} != {want!r}"]
        return [m for i, (w, h) in enumerate(zip(want, have, strict=True))
                for m in _missing(w, h, f"{path}[{i}]")]  # fmt: skip
    return [] if want == have else [f"{path}: {have!r} != {want!r}"]


def test_rendered_objects_are_the_applied_ones(cluster: Cluster) -> None:
    network = {"allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "search"}}}]}
    docs = [policy(strategy="static", staticOrder=["alpha", "beta"], calibration=None),
            fleet(network=network)]  # fmt: skip
    cluster.apply(*copy.deepcopy(docs))
    live_fleet = cluster.get("fleet", "f")
    assert live_fleet is not None
    reconcile_fleet(KubeGateway(cluster.cp.api_client()), OperatorConfig(), live_fleet, NOW)

    rendered = render_documents(docs, namespace=cluster.ns)
    assert [(o["kind"], o["metadata"]["name"]) for o in rendered] == [
        ("NetworkPolicy", "f"), ("PodDisruptionBudget", "f-workers"), ("RayService", "f"),
        ("Service", "f"),
    ]  # fmt: skip
    uid = live_fleet["metadata"]["uid"]
    for obj in rendered:
        live = cluster.get(f"{obj['kind'].lower()}.{obj['apiVersion'].split('/')[0]}"
                           if "/" in obj["apiVersion"] else obj["kind"].lower(),
                           obj["metadata"]["name"])  # fmt: skip
        assert live is not None, f"{obj['kind']}/{obj['metadata']['name']} was not applied"
        # The file's fleet has no uid yet; the live one has the API server's.
        obj["metadata"]["ownerReferences"][0]["uid"] = uid
        gaps = _missing({"metadata": obj["metadata"], "spec": obj["spec"]}, live)
        assert gaps == [], f"{obj['kind']}: {gaps}"
