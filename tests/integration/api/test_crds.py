"""The generated CRDs against a real kube-apiserver: accepted, explained, and enforced.

Each invalid object below must be rejected at apply time with a message that names the
offending field and the rule, so a platform engineer can fix it without reading our code.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from shoal.devtools.testing import REPO_ROOT
from shoal.devtools.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

POLICY = {
    "apiVersion": "shoal.dev/v1alpha1",
    "kind": "RoutingPolicy",
    "metadata": {"name": "p"},
    "spec": {"calibration": {"configMapRef": {"name": "cal", "key": "data.jsonl"}}},
}
FLEET = {
    "apiVersion": "shoal.dev/v1alpha1",
    "kind": "ModelFleet",
    "metadata": {"name": "f"},
    "spec": {
        "routingPolicyRef": {"name": "p"},
        "tiers": [{"name": "small", "costPerReplicaHour": "1.20"}],
        "models": [{"name": "math", "source": "hf://org/math-7b", "tier": "small"}],
    },
}
TENANT = {
    "apiVersion": "shoal.dev/v1alpha1",
    "kind": "Tenant",
    "metadata": {"name": "team"},
    "spec": {
        "fleetRef": {"name": "f"},
        "apiKeys": [{"secretRef": {"name": "team-key", "key": "key"}}],
    },
}


def apply(cp: ControlPlane, ns: str, obj: dict[str, Any]) -> tuple[int, str]:
    result = cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj), check=False)
    return result.returncode, result.stdout + result.stderr


def with_spec(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of ``base`` with ``spec.<path>`` set (dotted, list indices as numbers)."""
    obj = copy.deepcopy(base)
    node: Any = obj["spec"]
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return obj


def test_valid_objects_apply_and_get_defaults(control_plane: ControlPlane, namespace: str) -> None:
    assert apply(control_plane, namespace, POLICY)[0] == 0
    assert apply(control_plane, namespace, FLEET)[0] == 0
    out = control_plane.kubectl("get", "modelfleet", "f", "-n", namespace, "-o", "json").stdout
    spec = json.loads(out)["spec"]
    assert spec["models"][0]["engine"] == "vllm"
    assert spec["tiers"][0]["slo"]["ttftP95Milliseconds"] == 1000
    assert spec["tiers"][0]["autoscaling"]["scaleDownCooldownSeconds"] == 300
    assert spec["serving"]["serviceType"] == "ClusterIP"


def test_examples_apply_cleanly(control_plane: ControlPlane, namespace: str) -> None:
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for doc in docs:
            code, out = apply(control_plane, namespace, doc)
            assert code == 0, f"{path.name}: {out}"


INVALID_FLEETS = [
    ("models.0.tier", "large", "spec.models", "every model's tier must be the name of a tier in spec.tiers"),
    ("models.0.minReplicas", 5, "spec.models[0].minReplicas", "minReplicas must be less than or equal to maxReplicas"),
    ("tiers.0.costPerReplicaHour", "-1", "spec.tiers[0].costPerReplicaHour", "should match"),
    ("tiers.0.costPerReplicaHour", "1.2.3", "spec.tiers[0].costPerReplicaHour", "should match"),
    ("tiers.0.costPerReplicaHour", 1.2, "spec.tiers[0].costPerReplicaHour", "must be of type string"),
    ("models.0.engine", "tgi", "spec.models[0].engine", 'supported values: "vllm", "llamacpp", "simulated"'),
    ("models.0.source", "ftp://host/model", "spec.models[0].source", "should match"),
    ("routingPolicyRef.name", "", "spec.routingPolicyRef.name", "should be at least 1 chars long"),
    ("routingPolicyRef", {}, "spec.routingPolicyRef.name", "Required value"),
    ("models.0.name", "Math_Model", "spec.models[0].name", "should match"),
    ("models", [], "spec.models", "should have at least 1 items"),
    ("models.0.engine", "llamacpp", "spec.models[0].loraAdapters", "loraAdapters are supported only by the vllm engine"),
    ("tiers.0.autoscaling", {"minReplicas": 0}, "spec.tiers[0].autoscaling.minReplicas", "minReplicas 0 requires scaleToZero: true"),
    ("budget", {"maxCostPerHour": "lots"}, "spec.budget.maxCostPerHour", "should match"),
    ("models.0.accelerator", {"type": "L4", "count": 0}, "spec.models[0].accelerator.count", "should be greater than or equal to 1"),
    ("models.0.resources", {"memory": "16 GB"}, "spec.models[0].resources.memory", "should match"),
    ("models.1", {"name": "math", "source": "hf://o/m", "tier": "small"}, "spec.models[1]", "Duplicate value"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "message"), INVALID_FLEETS)
def test_invalid_fleet_is_rejected_naming_field_and_rule(
    control_plane: ControlPlane, namespace: str, path: str, value: Any, field: str, message: str
) -> None:
    base = copy.deepcopy(FLEET)
    base["spec"]["models"][0]["maxReplicas"] = 2
    base["spec"]["models"][0]["loraAdapters"] = [{"name": "a", "source": "s3://bucket/a"}]
    if path == "models.1":
        base["spec"]["models"].append({})
    code, out = apply(control_plane, namespace, with_spec(base, path, value))
    assert code != 0, f"accepted an invalid fleet ({path}={value!r})"
    assert field in out and message in out, out


INVALID_POLICIES = [
    ("alpha", "1.5", "spec.alpha", "should match"),
    ("alpha", 0.5, "spec.alpha", "must be of type string"),
    ("topP", 20, "spec.topP", "should be less than or equal to 16"),
    ("clusters", 2, "spec.topP", "topP may not exceed clusters"),
    ("strategy", "random", "spec.strategy", 'supported values: "cluster", "static"'),
    ("calibration", None, "spec.calibration", "the cluster strategy needs calibration data"),
    ("calibration", {"uri": "s3://bucket/x", "configMapRef": {"name": "c", "key": "k"}}, "spec.calibration", "set exactly one of configMapRef and uri"),
    ("embedder", {"type": "openai"}, "spec.embedder.endpoint", "an openai embedder needs endpoint and model"),
    ("temperature", "0", "spec.temperature", "should match"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "message"), INVALID_POLICIES)
def test_invalid_policy_is_rejected_naming_field_and_rule(
    control_plane: ControlPlane, namespace: str, path: str, value: Any, field: str, message: str
) -> None:
    obj = with_spec(POLICY, path, value)
    if value is None:
        del obj["spec"][path]
    obj["spec"].setdefault("topP", 3)
    code, out = apply(control_plane, namespace, obj)
    assert code != 0, f"accepted an invalid policy ({path}={value!r})"
    assert field in out and message in out, out


INVALID_FLEET_ACCESS = [
    ("access", {"mode": "Closed"}, "spec.access.mode", 'supported values: "Open", "Tenants"'),
    ("serving", {"gateway": {"parentRefs": []}}, "spec.serving.gateway.parentRefs", "should have at least 1 items"),
    ("serving", {"gateway": {"parentRefs": [{"name": "Public GW"}]}}, "spec.serving.gateway.parentRefs[0].name", "should match"),
    ("serving", {"gateway": {"parentRefs": [{"name": "gw"}], "hostnames": ["https://llm.example.com"]}}, "spec.serving.gateway.hostnames[0]", "should match"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "message"), INVALID_FLEET_ACCESS)
def test_invalid_access_and_gateway_are_rejected_naming_the_field(
    control_plane: ControlPlane, namespace: str, path: str, value: Any, field: str, message: str
) -> None:
    code, out = apply(control_plane, namespace, with_spec(FLEET, path, value))
    assert code != 0, f"accepted an invalid fleet ({path}={value!r})"
    assert field in out and message in out, out


def test_tenants_apply_and_get_defaults(control_plane: ControlPlane, namespace: str) -> None:
    tenant = with_spec(TENANT, "budget", {"maxCostPerHour": "5.00"})
    assert apply(control_plane, namespace, tenant)[0] == 0
    out = control_plane.kubectl("get", "tenant", "team", "-n", namespace, "-o", "json").stdout
    spec = json.loads(out)["spec"]
    assert spec["budget"]["softLimitPercent"] == 80
    assert spec["limits"] == {} and spec["routing"] == {}
    explain = control_plane.kubectl("explain", "tenant.spec.apiKeys.secretRef").stdout
    assert "shoal.dev/api-key" in control_plane.kubectl("explain", "tenant.spec.apiKeys").stdout
    assert "Key within the Secret" in explain


INVALID_TENANTS = [
    ("limits", {"requestsPerMinute": 0}, "spec.limits.requestsPerMinute", "should be greater than or equal to 1"),
    ("limits", {"tokensPerMinute": -5}, "spec.limits.tokensPerMinute", "should be greater than or equal to 1"),
    ("limits", {"concurrentRequests": "ten"}, "spec.limits.concurrentRequests", "must be of type integer"),
    ("budget", {"maxCostPerHour": "five"}, "spec.budget.maxCostPerHour", "should match"),
    ("budget", {"maxCostPerHour": "5", "softLimitPercent": 0}, "spec.budget.softLimitPercent", "should be greater than or equal to 1"),
    ("budget", {}, "spec.budget.maxCostPerHour", "Required value"),
    ("routing", {"minAlpha": "1.5"}, "spec.routing.minAlpha", "should match"),
    ("routing", {"minAlpha": "0.9", "maxAlpha": "0.1"}, "spec.routing.minAlpha", "routing.minAlpha must be less than or equal to routing.maxAlpha"),
    ("allowedTiers", ["Gold Tier"], "spec.allowedTiers[0]", "should match"),
    ("allowedModels", ["Math_Model"], "spec.allowedModels[0]", "should match"),
    ("apiKeys", [], "spec.apiKeys", "should have at least 1 items"),
    ("apiKeys", [{"secretRef": {"name": "team-key"}}], "spec.apiKeys[0].secretRef.key", "Required value"),
    ("apiKeys", [{"secretRef": {"key": "key"}}], "spec.apiKeys[0].secretRef.name", "Required value"),
    ("apiKeys", [{"secretRef": {"name": "Team_Key", "key": "key"}}], "spec.apiKeys[0].secretRef.name", "should match"),
    ("apiKeys", [{"secretRef": {"name": "team-key", "key": "a/b"}}], "spec.apiKeys[0].secretRef.key", "should match"),
    ("apiKeys", [{"secretRef": {"name": "k", "key": "key"}}] * 2, "spec.apiKeys", "apiKeys must name each Secret key once"),
    ("apiKeys", [{"secret": "team-key"}], "spec.apiKeys[0]", "unknown field"),
    ("fleetRef", {}, "spec.fleetRef.name", "Required value"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "message"), INVALID_TENANTS)
def test_invalid_tenant_is_rejected_naming_field_and_rule(
    control_plane: ControlPlane, namespace: str, path: str, value: Any, field: str, message: str
) -> None:
    code, out = apply(control_plane, namespace, with_spec(TENANT, path, value))
    assert code != 0, f"accepted an invalid tenant ({path}={value!r})"
    assert field in out and message in out, out


def test_unknown_fields_are_rejected_by_strict_validation(
    control_plane: ControlPlane, namespace: str
) -> None:
    code, out = apply(control_plane, namespace, with_spec(FLEET, "modelz", []))
    assert code != 0
    assert 'unknown field "spec.modelz"' in out


def test_kubectl_explain_shows_descriptions(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("explain", "modelfleet.spec.models").stdout
    assert "The specialist models of the fleet." in out
    assert "Serving engine: vllm" in out
    out = control_plane.kubectl("explain", "rpol.spec.alpha").stdout
    assert "Quality weight in [0, 1]" in out


def test_get_fleets_shows_printer_columns(control_plane: ControlPlane, namespace: str) -> None:
    assert apply(control_plane, namespace, FLEET)[0] == 0
    status = {
        "status": {
            "readyModels": "1/1",
            "endpoint": "http://f.ns.svc:8000/v1",
            "costPerHour": "1.20",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "AllModelsReady",
                 "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ],
        }
    }  # fmt: skip
    control_plane.kubectl(
        "patch", "modelfleet", "f", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip
    out = control_plane.kubectl("get", "fleets", "-n", namespace).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "MODELS", "ENDPOINT", "COST/H", "AGE"]
    assert row.split()[:5] == ["f", "True", "1/1", "http://f.ns.svc:8000/v1", "1.20"]
    out = control_plane.kubectl("get", "shoal", "-n", namespace).stdout
    assert "modelfleet.shoal.dev/f" in out


def test_rayservice_crd_is_installed(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("get", "crd", "rayservices.ray.io", "-o", "name").stdout
    assert out.strip() == "customresourcedefinition.apiextensions.k8s.io/rayservices.ray.io"
