"""The operator's autoscaler settings, as the Helm chart passes them (the contract)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shoal.operator.config import OperatorConfig


def test_defaults_leave_the_autoscaler_off_and_say_why() -> None:
    c = OperatorConfig.from_env({})
    assert (c.prometheus_url, c.autoscaler_enabled, c.autoscaler_dry_run) == ("", True, False)
    assert (c.autoscaler_interval_seconds, c.autoscaler_stale_seconds) == (15.0, 60.0)
    assert c.default_budget is None
    assert c.autoscaler_mode == "Off"
    assert "SHOAL_PROMETHEUS_URL is empty" in c.autoscaler_off_reason


def test_every_variable_of_the_contract() -> None:
    c = OperatorConfig.from_env({
        "SHOAL_PROMETHEUS_URL": " http://prometheus:9090 ",
        "SHOAL_AUTOSCALER_ENABLED": "true",
        "SHOAL_AUTOSCALER_INTERVAL_SECONDS": "5",
        "SHOAL_AUTOSCALER_DRY_RUN": "false",
        "SHOAL_AUTOSCALER_STALE_SECONDS": "45",
        "SHOAL_DEFAULT_BUDGET_PER_HOUR": "25.50",
        "SHOAL_AUTOSCALER_HEADROOM_PERCENT": "80",
        "SHOAL_AUTOSCALER_BURST_WINDOW_SECONDS": "900",
        "SHOAL_AUTOSCALER_MAX_SCALE_UP_FACTOR": "3",
        "SHOAL_AUTOSCALER_QUEUE_DRAIN_SECONDS": "45",
        "SHOAL_AUTOSCALER_COLD_START_SECONDS": "120",
        "SHOAL_AUTOSCALER_STEP_SIGMA": "4",
        "SHOAL_AUTOSCALER_RELEASE_SIGMA": "0",
        "SHOAL_AUTOSCALER_SPILL_BRIDGE": "0.5",
    })  # fmt: skip
    assert c.prometheus_url == "http://prometheus:9090"
    assert (c.autoscaler_interval_seconds, c.autoscaler_stale_seconds) == (5.0, 45.0)
    assert c.default_budget == Decimal("25.50")
    assert c.autoscaler_mode == "Active" and c.autoscaler_off_reason == ""
    assert c.autoscaler_burst_window_seconds == 900.0
    ps = c.policy_settings()
    assert (ps.stale_seconds, ps.headroom_percent) == (45.0, 80)
    assert (ps.max_scale_up_factor, ps.queue_drain_seconds) == (3.0, 45.0)
    assert (ps.cold_start_seconds, ps.step_sigma, ps.release_sigma) == (120.0, 4.0, 0.0)
    assert ps.spill_bridge == 0.5
    # The bridge is on by default in the operator (the study's recommended design); it acts
    # only for fleets whose routing policy spills.
    assert OperatorConfig.from_env({}).policy_settings().spill_bridge == 1.0
    url = {"SHOAL_PROMETHEUS_URL": "http://p:9090"}
    assert (
        OperatorConfig.from_env({**url, "SHOAL_AUTOSCALER_DRY_RUN": "True"}).autoscaler_mode
        == "DryRun"
    )
    off = OperatorConfig.from_env({**url, "SHOAL_AUTOSCALER_ENABLED": "false"})
    assert (
        off.autoscaler_mode == "Off"
        and "SHOAL_AUTOSCALER_ENABLED=false" in off.autoscaler_off_reason
    )
    assert OperatorConfig.from_env({"SHOAL_DEFAULT_BUDGET_PER_HOUR": ""}).default_budget is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SHOAL_AUTOSCALER_ENABLED": "maybe"}, "SHOAL_AUTOSCALER_ENABLED must be true or false"),
        ({"SHOAL_AUTOSCALER_DRY_RUN": "2"}, "SHOAL_AUTOSCALER_DRY_RUN must be true or false"),
        (
            {"SHOAL_DEFAULT_BUDGET_PER_HOUR": "-3"},
            "SHOAL_DEFAULT_BUDGET_PER_HOUR must be a decimal",
        ),
        (
            {"SHOAL_DEFAULT_BUDGET_PER_HOUR": "1e3"},
            "SHOAL_DEFAULT_BUDGET_PER_HOUR must be a decimal",
        ),
        ({"SHOAL_AUTOSCALER_INTERVAL_SECONDS": "0"}, "must be positive"),
        ({"SHOAL_AUTOSCALER_STALE_SECONDS": "-1"}, "must be positive"),
        ({"SHOAL_AUTOSCALER_HEADROOM_PERCENT": "lots"}, "HEADROOM_PERCENT must be a whole"),
        ({"SHOAL_AUTOSCALER_HEADROOM_PERCENT": "500"}, "HEADROOM_PERCENT must be within"),
        ({"SHOAL_AUTOSCALER_MAX_SCALE_UP_FACTOR": "0.5"}, "FACTOR must be at least 1"),
        ({"SHOAL_AUTOSCALER_QUEUE_DRAIN_SECONDS": "0"}, "must be positive seconds"),
        ({"SHOAL_AUTOSCALER_COLD_START_SECONDS": "-5"}, "COLD_START_SECONDS must be within"),
        ({"SHOAL_AUTOSCALER_STEP_SIGMA": "-1"}, "STEP_SIGMA and SHOAL_AUTOSCALER_RELEASE_SIGMA"),
        ({"SHOAL_AUTOSCALER_RELEASE_SIGMA": "11"}, "must be within 0..10"),
        ({"SHOAL_AUTOSCALER_SPILL_BRIDGE": "-0.5"}, "SPILL_BRIDGE must be within 0..4"),
        ({"SHOAL_AUTOSCALER_SPILL_BRIDGE": "5"}, "SPILL_BRIDGE must be within 0..4"),
    ],
)
def test_bad_values_stop_the_operator_with_the_variable_named(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorConfig.from_env(env)
