"""The operator's Ray Serve environment for the Ray pods (SHOAL_RAY_SERVE_ENV, Helm's
serving.rayServeEnv): Shoal's settings, with the chart's overrides on top."""

from __future__ import annotations

import pytest

from shoal.contract import RAY_SERVE_ENV
from shoal.operator.config import OperatorConfig


def test_default_is_shoals_ray_serve_settings() -> None:
    assert OperatorConfig.from_env({}).ray_serve_env == RAY_SERVE_ENV
    assert OperatorConfig.from_env({"SHOAL_RAY_SERVE_ENV": "{}"}).ray_serve_env == RAY_SERVE_ENV


def test_overrides_go_on_top() -> None:
    env = OperatorConfig.from_env(
        {"SHOAL_RAY_SERVE_ENV": '{"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_X": "1"}'}
    ).ray_serve_env
    assert env == {**RAY_SERVE_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_X": "1"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("RAY_SERVE_ENABLE_HA_PROXY=0", "must be a JSON object of strings"),
        ('["RAY_SERVE_ENABLE_HA_PROXY"]', "must be a JSON object of strings"),
        ('{"RAY_SERVE_ENABLE_HA_PROXY": 0}', "must be a JSON object of strings"),
        ('{"ray-serve": "1"}', "not environment variable names: 'ray-serve'"),
    ],
)
def test_bad_overrides_stop_the_operator_with_the_variable_named(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"SHOAL_RAY_SERVE_ENV.*{message}"):
        OperatorConfig.from_env({"SHOAL_RAY_SERVE_ENV": raw})


def test_the_operators_namespace_reaches_the_fleets_network_policy() -> None:
    """The chart passes the pod's namespace (downward API) and KubeRay's; the NetworkPolicy of
    every fleet then admits the operator and KubeRay from those namespaces only."""
    from shoal.api.v1alpha1 import ModelFleet
    from shoal.operator.fleets import plan_settings

    config = OperatorConfig.from_env(
        {"SHOAL_OPERATOR_NAMESPACE": "shoal-system", "SHOAL_KUBERAY_NAMESPACE": "ray"}
    )
    fleet = ModelFleet.model_validate({
        "metadata": {"name": "f", "namespace": "ns"},
        "spec": {"routingPolicyRef": {"name": "p"},
                 "tiers": [{"name": "t", "costPerReplicaHour": "1"}],
                 "models": [{"name": "m", "engine": "simulated", "tier": "t"}]},
    })  # fmt: skip
    peers = plan_settings(config, fleet).peers
    assert (peers.operator_namespace, peers.kuberay_namespace) == ("shoal-system", "ray")
    unset = plan_settings(OperatorConfig.from_env({}), fleet).peers
    assert (unset.operator_namespace, unset.kuberay_namespace) == (None, None)


def test_tenant_settings_from_the_environment() -> None:
    from shoal.operator.config import OperatorConfig

    config = OperatorConfig.from_env(
        {"SHOAL_TENANT_STORE_FAILURE_MODE": "closed", "SHOAL_TENANT_SYNC_INTERVAL_SECONDS": "0.5",
         "SHOAL_TENANT_KEY_RESYNC_SECONDS": "5", "SHOAL_TENANT_USAGE_INTERVAL_SECONDS": "30"}
    )  # fmt: skip
    assert config.access_settings().store_failure_mode == "closed"
    assert config.access_settings().sync_interval_seconds == 0.5
    assert (config.tenant_key_resync_seconds, config.tenant_usage_interval_seconds) == (5, 30)
    import pytest

    with pytest.raises(ValueError, match="SHOAL_TENANT_STORE_FAILURE_MODE"):
        OperatorConfig.from_env({"SHOAL_TENANT_STORE_FAILURE_MODE": "maybe"})


def test_usage_queries_read_both_spellings_per_tenant() -> None:
    from shoal.operator.tenants import usage_queries

    q = usage_queries("team", "f")
    assert set(q) == {"cost", "requests", "tokens", "reference"}
    assert "sum by (tenant) (increase(shoal_tenant_cost_usd_total{" in q["cost"]
    assert 'ray_shoal_tenant_cost_usd_total{namespace="team", fleet="f"}[1h]' in q["cost"]


def test_fqdn_policies_from_the_environment_reach_the_plan() -> None:
    from tests.unit.planning.test_children import fleet

    from shoal.operator.fleets import plan_settings

    assert OperatorConfig.from_env({}).fqdn_policies is None
    config = OperatorConfig.from_env({"SHOAL_FQDN_POLICIES": "Cilium"})
    assert config.fqdn_policies == "cilium"
    assert plan_settings(config, fleet()).cilium_fqdn_policy
    with pytest.raises(ValueError, match="SHOAL_FQDN_POLICIES must be empty or 'cilium'"):
        OperatorConfig.from_env({"SHOAL_FQDN_POLICIES": "calico"})
