"""The chart's values: the schema is generated and current, values.yaml documents every value
and agrees with the model, and Helm and the model reject the same bad values, clearly."""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from tests.unit.chart.helm import CHART, MATRIX, run_helm

from shoal.devtools.chart import values as values_module
from shoal.devtools.chart.values import LATENCY_BUCKETS, Values
from shoal.devtools.testing import REPO_ROOT


def _values_yaml() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_generated_chart_files_are_current() -> None:
    """values.schema.json, the dashboard and the CRD templates match the code (`shoal chart`)."""
    result = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "chart", "--check", "--chart", str(CHART)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_values_yaml_is_the_model_defaults() -> None:
    """values.yaml has the model's keys and defaults, nothing more, nothing less."""
    assert _values_yaml() == Values().model_dump(by_alias=True)


def _model_paths(model: type[Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, info in model.model_fields.items():
        path = (*prefix, info.alias or name)
        paths.append(path)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, values_module.ChartModel):
            paths += _model_paths(annotation, path)
    return paths


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line index of every mapping key in a block-style YAML file, by its path."""
    stack: list[tuple[int, str]] = []
    found: dict[tuple[str, ...], int] = {}
    for i, line in enumerate(text.splitlines()):
        m = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(\s|$)", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        found[tuple(k for _, k in stack)] = i
    return found


def test_every_value_has_a_comment() -> None:
    """Each key of values.yaml, leaf or section, has a comment on the line above it."""
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    keys = _key_lines(text)
    missing = []
    for path in _model_paths(Values):
        assert path in keys, f"{'.'.join(path)} is not in values.yaml"
        above = lines[keys[path] - 1].strip() if keys[path] else ""
        if not above.startswith("#"):
            missing.append(".".join(path))
    assert not missing, f"values without a comment above them: {missing}"


def test_chart_defaults_match_the_operators() -> None:
    """Where the operator has a default of its own, the chart's default is the same."""
    from shoal.operator.config import OperatorConfig

    op, v = OperatorConfig(), Values()
    assert v.operator.resync_seconds == op.resync_seconds
    assert v.operator.retry_seconds == op.retry_seconds
    assert v.operator.api_timeout_seconds == op.api_timeout_seconds
    assert v.autoscaler.enabled == op.autoscaler_enabled
    assert v.autoscaler.interval_seconds == op.autoscaler_interval_seconds
    assert v.autoscaler.stale_seconds == op.autoscaler_stale_seconds
    assert v.autoscaler.headroom_percent == op.autoscaler_headroom_percent
    assert v.autoscaler.burst_window_seconds == op.autoscaler_burst_window_seconds
    assert v.autoscaler.max_scale_up_factor == op.autoscaler_max_scale_up_factor
    assert v.autoscaler.queue_drain_seconds == op.autoscaler_queue_drain_seconds
    assert v.autoscaler.cold_start_seconds == op.autoscaler_cold_start_seconds
    assert v.autoscaler.step_sigma == op.autoscaler_step_sigma
    assert v.autoscaler.release_sigma == op.autoscaler_release_sigma
    assert v.autoscaler.spill_bridge == op.autoscaler_spill_bridge
    assert v.autoscaler.dry_run == op.autoscaler_dry_run
    assert (v.autoscaler.prometheus_url or None) == (op.prometheus_url or None)
    assert (v.autoscaler.default_budget_per_hour or None) == op.default_budget_per_hour


def test_latency_buckets_are_the_serving_layers() -> None:
    from shoal.serving.metrics import LATENCY_BUCKETS as SERVING_BUCKETS

    assert tuple(SERVING_BUCKETS) == LATENCY_BUCKETS


def test_chart_package_imports_only_the_api() -> None:
    """shoal.devtools.chart is a leaf: of Shoal's modules it may import shoal.api only."""
    offenders = []
    for path in (REPO_ROOT / "src/shoal/devtools/chart").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("shoal") and not name.startswith(
                    ("shoal.api", "shoal.devtools.chart")
                ):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []


def _set(values: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(values)
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


#: (values to set, where Helm must say the problem is, what it must say)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"replicaCount": 0}, "/replicaCount", "minimum: got 0, want 1"),
    ({"replicaCount": 9}, "/replicaCount", "maximum: got 9, want 5"),
    ({"replicaCount": "two"}, "/replicaCount", "got string, want integer"),
    ({"replicas": 2}, "", "additional properties 'replicas' not allowed"),
    ({"operator.logFormat": "xml"}, "/operator/logFormat", "value must be one of 'plain', 'full', 'json'"),
    ({"operator.watchNamespaces": ["Team_A"]}, "/operator/watchNamespaces/0", "does not match pattern"),
    ({"operator.watchNamespaces": ["a", "a"]}, "/operator/watchNamespaces", "items at 0 and 1 are equal"),
    ({"operator.metricsPort": 80}, "/operator/metricsPort", "minimum: got 80, want 1,024"),
    ({"operator.peering.name": "Peers!"}, "/operator/peering/name", "does not match pattern"),
    ({"image.digest": "sha256:abc"}, "/image/digest", "does not match pattern"),
    ({"image.pullPolicy": "Sometimes"}, "/image/pullPolicy", "value must be one of"),
    ({"autoscaler.prometheusUrl": "prometheus:9090"}, "/autoscaler/prometheusUrl", "does not match pattern"),
    ({"autoscaler.defaultBudgetPerHour": "lots"}, "/autoscaler/defaultBudgetPerHour", "does not match pattern"),
    ({"autoscaler.defaultBudgetPerHour": 25}, "/autoscaler/defaultBudgetPerHour", "got number, want string"),
    ({"autoscaler.intervalSeconds": 1}, "/autoscaler/intervalSeconds", "minimum: got 1, want 5"),
    ({"rbac.namespaced": True}, "/operator/watchNamespaces", "minItems: got 0, want 1"),
    ({"podSecurity.runAsUser": 0}, "/podSecurity/runAsUser", "minimum: got 0, want 1"),
    ({"resources.requests.memory": "lots"}, "/resources/requests/memory", "does not match pattern"),
    ({"monitoring.serviceMonitor.interval": "30 seconds"}, "/monitoring/serviceMonitor/interval", "does not match pattern"),
    ({"monitoring.prometheusRule.alerts.sloBurn.ttftThresholdSeconds": 0.9},
     "/monitoring/prometheusRule/alerts/sloBurn/ttftThresholdSeconds", "value must be one of"),
    ({"monitoring.prometheusRule.alerts.sloBurn.objective": 1}, "/monitoring/prometheusRule/alerts/sloBurn/objective", "exclusiveMaximum"),
    ({"monitoring.prometheusRule.alerts.budgetNearCap.severity": "page"},
     "/monitoring/prometheusRule/alerts/budgetNearCap/severity", "value must be one of 'critical', 'warning', 'info'"),
    ({"monitoring.dashboards.labels": {"grafana_dashboard": 1}}, "/monitoring/dashboards/labels/grafana_dashboard", "got number, want string"),
    ({"serving.rayServeEnv": {"ray-serve": "1"}}, "/serving/rayServeEnv", "additional properties 'ray-serve' not allowed"),
    ({"serving.rayServeEnv": {"RAY_SERVE_ENABLE_HA_PROXY": 0}}, "/serving/rayServeEnv/RAY_SERVE_ENABLE_HA_PROXY", "got number, want string"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "where", "says"), INVALID, ids=[str(c) for c, _, _ in INVALID])
def test_schema_rejects_bad_values_clearly(changes: dict[str, Any], where: str, says: str) -> None:
    """Helm refuses the values before rendering, naming the key and the rule; the model too."""
    values: dict[str, Any] = {}
    for dotted, value in changes.items():
        values = _set(values, dotted, value)
    result = run_helm("template", "shoal", str(CHART), values=values, check=False)
    assert result.returncode != 0, f"helm accepted {changes}"
    err = result.stderr
    assert "values don't meet the specifications of the schema" in err, err
    assert f"at '{where}'" in err and says in err, err
    with pytest.raises(ValidationError):
        Values.model_validate(_merge(_values_yaml(), values))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_model_accepts_every_matrix_entry(name: str) -> None:
    """The values the other tests render are valid for the model too (Helm checks its side)."""
    Values.model_validate(_merge(_values_yaml(), MATRIX[name]))


def test_schema_file_is_draft7_with_no_unknown_keys() -> None:
    import json

    import jsonschema  # type: ignore[import-untyped]

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    jsonschema.Draft7Validator(schema).validate(_values_yaml())


def test_values_docs_mention_every_section(tmp_path: Path) -> None:
    """docs/sre.md explains the autoscaler values and every alert the chart can create."""
    doc = (REPO_ROOT / "docs" / "sre.md").read_text()
    for key in Values().autoscaler.model_dump(by_alias=True):
        assert f"autoscaler.{key}" in doc, key
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    for alert in re.findall(r"- alert: (\w+)", rules):
        assert f"### {alert}" in doc, alert
