"""Which stale children a reconcile deletes (the router ConfigMap, the HTTPRoute), and when it
sends no request at all."""

from __future__ import annotations

from typing import Any

from shoal.api.v1alpha1 import ModelFleet
from shoal.operator.fleets import _prune

OWNED = {"ownerReferences": [{"kind": "ModelFleet", "name": "f", "uid": "u-1"}], "uid": "c-1"}


class RecordingGateway:
    """A fake gateway below the real API server tests (tests/integration/operator/
    test_ownership.py): records deletes, knows nothing, reads objects with ``meta``."""

    def __init__(self, meta: dict[str, Any] | None = None) -> None:
        self.deleted: list[str] = []
        self.meta = OWNED if meta is None else meta

    def known(self, api_version: str, kind: str, ns: str, name: str) -> tuple[bool, Any]:
        return False, None

    def read(self, api_version: str, kind: str, ns: str, name: str) -> Any:
        return {"kind": kind, "metadata": dict(self.meta)}

    def delete(
        self, api_version: str, kind: str, ns: str, name: str, *, uid: str | None = None
    ) -> bool:
        assert uid == self.meta.get("uid")  # only the object that was read
        self.deleted.append(f"{kind}/{name}")
        return True


def _fleet(status: dict[str, Any] | None) -> ModelFleet:
    body: dict[str, Any] = {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "ModelFleet",
        "metadata": {"name": "f", "namespace": "ns", "uid": "u-1"},
        "spec": {
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "t", "costPerReplicaHour": "1"}],
            "models": [{"name": "m", "engine": "simulated", "tier": "t"}],
        },
    }
    if status is not None:
        body["status"] = status
    return ModelFleet.model_validate(body)


def test_a_new_fleet_costs_no_delete() -> None:
    gw = RecordingGateway()
    _prune(gw, _fleet(None), [], verify=False)  # type: ignore[arg-type]
    assert gw.deleted == []


def test_a_reconciled_fleet_has_its_stale_children_deleted() -> None:
    gw = RecordingGateway()
    _prune(gw, _fleet({"observedGeneration": 1}), [], verify=False)  # type: ignore[arg-type]
    assert gw.deleted == ["ConfigMap/f-router", "HTTPRoute/f"]


def test_the_periodic_recheck_finds_a_leftover_of_a_new_fleet() -> None:
    gw = RecordingGateway()
    _prune(gw, _fleet(None), [], verify=True)  # type: ignore[arg-type]
    assert "ConfigMap/f-router" in gw.deleted


def test_a_child_of_the_name_that_the_fleet_does_not_own_is_left() -> None:
    gw = RecordingGateway({"uid": "c-2", "ownerReferences": []})
    _prune(gw, _fleet({"observedGeneration": 1}), [], verify=True)  # type: ignore[arg-type]
    assert gw.deleted == []


def test_the_cilium_policy_is_pruned_only_where_the_operator_writes_them() -> None:
    gw = RecordingGateway()
    _prune(gw, _fleet({"observedGeneration": 1}), [], verify=False)  # type: ignore[arg-type]
    assert "CiliumNetworkPolicy/f" not in gw.deleted  # no request to a kind it does not write
    _prune(gw, _fleet({"observedGeneration": 1}), [], verify=False, fqdn=True)  # type: ignore[arg-type]
    assert "CiliumNetworkPolicy/f" in gw.deleted
