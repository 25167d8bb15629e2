"""A fleet with a model served outside it: no deployment, no replicas, its key mounted only
when the operator granted it, and its state in the fleet's status."""

from __future__ import annotations

import json
from typing import Any

from shoal.api.v1alpha1 import ModelFleet, RoutingPolicy
from shoal.contract import MODEL_KEYS_DIR, deployment_plans
from shoal.planning.children import PlanSettings, build_args, desired_children
from shoal.planning.external import external_hosts
from shoal.planning.status import EXTERNAL, FleetObservation, fleet_status, model_statuses

BIG = {
    "name": "big", "engine": "openai", "tier": "frontier",
    "external": {"baseUrl": "https://API.example.com/v1", "model": "gpt-4o",
                 "apiKeySecretRef": {"name": "openai-key", "key": "token"},
                 "price": {"inputPerMillion": "2.50", "outputPerMillion": "10.00"}},
}  # fmt: skip
POOL = {
    "name": "pool", "engine": "openai", "tier": "frontier",
    "external": {"baseUrl": "http://big-pool.llm.svc:8000/v1", "model": "llama-70b",
                 "price": {"inputPerMillion": "0.20", "outputPerMillion": "0.20"}},
}  # fmt: skip


def fleet() -> ModelFleet:
    return ModelFleet.model_validate(
        {
            "metadata": {"name": "f", "namespace": "ns", "uid": "u-1", "generation": 2},
            "spec": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "cpu", "costPerReplicaHour": "0.10"},
                          {"name": "frontier", "costPerReplicaHour": "0"}],
                "models": [{"name": "tiny", "engine": "simulated", "tier": "cpu"}, BIG, POOL],
                "savings": {"referenceModel": "big"},
            },
        }
    )  # fmt: skip


def policy() -> RoutingPolicy:
    return RoutingPolicy.model_validate(
        {"metadata": {"name": "p", "namespace": "ns"},
         "spec": {"strategy": "static", "staticOrder": ["tiny", "big", "pool"]}}
    )  # fmt: skip


def _pods(children: Any) -> list[dict[str, Any]]:
    spec = children.rayservice["spec"]["rayClusterConfig"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def test_external_models_get_no_deployment_and_no_replicas() -> None:
    args = build_args(fleet(), policy(), None, PlanSettings())
    assert [p.model for p in deployment_plans(args)] == ["tiny"]
    children = desired_children(fleet(), policy(), None, PlanSettings())
    serve = json.dumps(children.rayservice["spec"]["serveConfigV2"])
    assert "model-big" not in serve and "model-pool" not in serve
    assert "gpt-4o" in serve  # the spec travels in the args, the key never does


def test_a_key_is_mounted_only_when_granted_and_never_put_in_the_environment() -> None:
    plain = desired_children(fleet(), policy(), None, PlanSettings())
    for pod in _pods(plain):
        assert all(v["name"] != "model-keys" for v in pod["spec"].get("volumes", []))
    granted = desired_children(
        fleet(), policy(), None, PlanSettings(granted_model_keys=frozenset({"big"}))
    )
    for pod in _pods(granted):
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "model-keys")
        sources = volume["projected"]["sources"]
        assert sources == [
            {"secret": {"name": "openai-key", "items": [{"key": "token", "path": "big"}]}}
        ]
        container = pod["spec"]["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "model-keys")
        assert mount == {"name": "model-keys", "mountPath": MODEL_KEYS_DIR, "readOnly": True}
        assert all("openai-key" not in json.dumps(e) for e in container.get("env", []))


def test_external_hosts_are_listed() -> None:
    assert external_hosts(fleet()) == ["api.example.com", "big-pool.llm.svc"]


def test_status_shows_external_models_as_external_or_why_their_key_is_refused() -> None:
    f = fleet()
    models = model_statuses(f, {}, [], {"big": "ModelKeyNotMarked"})
    states = {m.name: (m.state, m.desired_replicas) for m in models}
    assert states == {"tiny": (None, 0), "big": ("ModelKeyNotMarked", 0), "pool": (EXTERNAL, 0)}


def test_external_models_count_as_ready_and_cost_no_replica_hours() -> None:
    from datetime import UTC, datetime

    f = fleet()
    rs = {
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "activeServiceStatus": {
                "applicationStatuses": {
                    "f": {"status": "RUNNING",
                          "serveDeploymentStatuses": {"model-tiny": {"status": "HEALTHY"}}}
                }
            },
        }
    }  # fmt: skip
    plans = desired_children(f, policy(), None, PlanSettings()).plans
    status = fleet_status(
        f, FleetObservation(policy=policy(), rayservice=rs, plans=plans), None, datetime.now(UTC)
    )
    assert status.ready_models == "3/3"
    assert status.cost_per_hour == "0.10"
