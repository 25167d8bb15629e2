"""The cascade fields of RoutingPolicy and Tenant: defaults, and refusals that name the field
(the API-server side of the same rules is checked from the generated CRD's CEL)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shoal.api.v1alpha1 import RoutingPolicySpec, TenantSpec
from shoal.api.v1alpha1.crd import routing_policy_crd

CLUSTER = {"calibration": {"configMapRef": {"name": "c", "key": "k"}}}


def test_a_cascade_gets_its_defaults() -> None:
    spec = RoutingPolicySpec.model_validate({**CLUSTER, "cascade": {}})
    assert spec.cascade is not None
    c = spec.cascade
    assert (c.signal, c.threshold, c.max_chain) == ("LogprobMean", "-1.0", 2)
    assert (c.streaming, c.on_budget_exhausted) == ("Replay", "ReturnCheapAnswer")
    assert c.stage_seconds is None and c.chain_seconds is None
    assert RoutingPolicySpec.model_validate(CLUSTER).cascade is None


def test_a_full_cascade_round_trips_in_camel_case() -> None:
    cascade = {
        "signal": "LogprobMargin", "threshold": "0.5", "maxChain": 3,
        "maxCostPerRequest": "0.01", "onBudgetExhausted": "Refuse", "streaming": "FirstModel",
        "stageFirstTokenSeconds": "2.5", "chainTimeoutSeconds": "30",
    }  # fmt: skip
    spec = RoutingPolicySpec.model_validate({**CLUSTER, "cascade": cascade})
    assert spec.to_k8s()["cascade"] == cascade
    assert spec.cascade is not None and spec.cascade.stage_seconds == 2.5


@pytest.mark.parametrize(
    ("cascade", "needle"),
    [
        ({"threshold": "0.5"}, "cascade.threshold of a log-probability signal"),
        ({"signal": "LogprobMin", "threshold": "1"}, "must be at most 0"),
        ({"signal": "LogprobMargin", "threshold": "-0.1"}, "LogprobMargin signal must be at least"),
        ({"threshold": "abc"}, "threshold"),
        ({"signal": "Vibes"}, "signal"),
        ({"maxChain": 1}, "maxChain"),
        ({"maxChain": 9}, "maxChain"),
        ({"maxCostPerRequest": "-1"}, "maxCostPerRequest"),
        ({"onBudgetExhausted": "Hope"}, "onBudgetExhausted"),
        ({"streaming": "Sometimes"}, "streaming"),
        ({"stageFirstTokenSeconds": "0"}, "stageFirstTokenSeconds"),
        ({"stageFirstTokenSeconds": "10", "chainTimeoutSeconds": "5"},
         "cascade.stageFirstTokenSeconds may not exceed cascade.chainTimeoutSeconds"),
        ({"chainTimeoutSeconds": "12000"}, "chainTimeoutSeconds"),
        ({"typo": 1}, "typo"),
    ],
)  # fmt: skip
def test_bad_cascades_are_refused_naming_the_field(cascade: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        RoutingPolicySpec.model_validate({**CLUSTER, "cascade": cascade})
    assert needle in str(err.value)


def test_a_static_cascade_needs_two_models() -> None:
    with pytest.raises(ValidationError, match="at least two models in staticOrder"):
        RoutingPolicySpec.model_validate(
            {"strategy": "static", "staticOrder": ["a"], "cascade": {}}
        )
    spec = RoutingPolicySpec.model_validate(
        {"strategy": "static", "staticOrder": ["a", "b"], "cascade": {}}
    )
    assert spec.cascade is not None


def test_the_crd_carries_the_cascade_rules_with_their_fields() -> None:
    crd = routing_policy_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    cascade = spec["properties"]["cascade"]
    paths = {r.get("fieldPath") for r in cascade["x-kubernetes-validations"]}
    assert {".threshold", ".stageFirstTokenSeconds"} <= paths
    assert any(r.get("fieldPath") == ".cascade" for r in spec["x-kubernetes-validations"])


def test_a_tenant_may_choose_its_cascade_streaming() -> None:
    base = {"fleetRef": {"name": "f"}, "apiKeys": [{"secretRef": {"name": "s", "key": "k"}}]}
    spec = TenantSpec.model_validate({**base, "routing": {"cascadeStreaming": "FirstModel"}})
    assert spec.routing.cascade_streaming == "FirstModel"
    with pytest.raises(ValidationError, match="cascadeStreaming"):
        TenantSpec.model_validate({**base, "routing": {"cascadeStreaming": "Never"}})


def test_the_cascade_travels_in_the_serving_config() -> None:
    from shoal.contract import BuildArgs, serve_application

    cascade = {"signal": "LogprobMin", "threshold": "-3", "streaming": "FirstModel"}
    args = BuildArgs.parse({
        "fleet_name": "f",
        "fleet": {"routingPolicyRef": {"name": "p"},
                  "tiers": [{"name": "small", "costPerReplicaHour": "1"}],
                  "models": [{"name": "a", "engine": "simulated", "tier": "small"},
                             {"name": "b", "engine": "simulated", "tier": "small"}]},
        "policy": {"strategy": "static", "staticOrder": ["a", "b"], "cascade": cascade},
    })  # fmt: skip
    rendered = serve_application(args)["args"]
    assert rendered["policy"]["cascade"].items() >= cascade.items()  # defaults filled in
    back = BuildArgs.parse(rendered)
    assert back.policy.cascade is not None and back.policy.cascade.signal == "LogprobMin"
