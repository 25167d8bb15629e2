"""``RoutingPolicy.spec.feedback`` on the real API server: defaults filled in, and each out of
range value refused with a message that names the field (the cross-field rule, feedback on a
static policy, is in test_cel_rules.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.integration.api.test_crds import POLICY, apply, with_spec

from shoal.api.v1alpha1 import RoutingPolicy
from shoal.devtools.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def test_defaults_are_filled_in_and_read_back(control_plane: ControlPlane, namespace: str) -> None:
    code, out = apply(control_plane, namespace, with_spec(POLICY, "feedback", {"enabled": True}))
    assert code == 0, out
    got = control_plane.kubectl("get", "rpol", "p", "-n", namespace, "-o", "json").stdout
    feedback = json.loads(got)["spec"]["feedback"]
    assert feedback == {"enabled": True, "priorWeight": 8, "refitIntervalSeconds": 600,
                        "minEvents": 100, "maxCalibrationRegressionPercent": "1.0",
                        "mode": "Apply", "pessimism": "1", "minImprovementPercent": "0"}  # fmt: skip
    spec = RoutingPolicy.model_validate(json.loads(got)).spec.feedback
    assert spec is not None and spec.prior_weight == 8


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("refitIntervalSeconds", 10, "should be greater than or equal to 30"),
        ("priorWeight", -1, "should be greater than or equal to 0"),
        ("minEvents", 0, "should be greater than or equal to 1"),
        ("maxCalibrationRegressionPercent", "101", "should match"),
        ("maxCalibrationRegressionPercent", "-1", "should match"),
        ("pessimism", "11", "should match"),
        ("minImprovementPercent", "-0.5", "should match"),
        ("mode", "Shadow", "Unsupported value"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(
    control_plane: ControlPlane, namespace: str, field: str, value: Any, says: str
) -> None:
    obj = with_spec(POLICY, "feedback", {"enabled": True, field: value})
    code, out = apply(control_plane, namespace, obj)
    assert code != 0, f"accepted feedback.{field}={value!r}"
    text = " ".join(out.split())
    assert f"spec.feedback.{field}" in text and says in text, text
