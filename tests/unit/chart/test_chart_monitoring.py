"""Alerts, dashboard and fleet-state metrics: the rules pass ``promtool check rules`` and fire
when they should (``promtool test rules``), the dashboard is well-formed Grafana JSON whose
every query parses, and every metric they read is one something exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.chart.helm import CHART, MATRIX, one, render, select

from shoal.devtools.chart import dashboard
from shoal.devtools.testing import REPO_ROOT, require

RULE_ENTRIES = ["monitoring", "monitoring-tuned"]


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool not installed (Debian package prometheus; hack/setup.sh)")
    assert path is not None
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def rule_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule groups of the rendered PrometheusRule, as a Prometheus rules file has them."""
    return list(one(render(values), "PrometheusRule")["spec"]["groups"])


@pytest.mark.parametrize("name", RULE_ENTRIES)
def test_rules_pass_promtool_check(name: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(MATRIX[name])}))
    result = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_has_what_a_pager_needs() -> None:
    alerts = [r for g in rule_groups(MATRIX["monitoring"]) for r in g["rules"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert names == {"ShoalFleetNotReady", "ShoalTTFTBudgetBurnFast", "ShoalTTFTBudgetBurnSlow",
                     "ShoalFleetBudgetNearCap", "ShoalRouterFallbackSpike",
                     "ShoalOperatorReconcileErrors", "ShoalOperatorDown"}  # fmt: skip
    doc = (REPO_ROOT / "docs" / "sre.md").read_text()
    for a in alerts:
        assert a["labels"]["severity"] in {"critical", "warning", "info"}
        assert {"summary", "description", "runbook_url"} <= a["annotations"].keys()
        anchor = a["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == a["alert"].lower() and f"### {a['alert']}" in doc


def test_alerts_follow_their_switches() -> None:
    tuned = {r["alert"] for g in rule_groups(MATRIX["monitoring-tuned"]) for r in g["rules"]
             if "alert" in r}  # fmt: skip
    # fleetNotReady and reconcileErrors are off; the fleet-state ones need kube-state-metrics,
    # ShoalOperatorDown the ServiceMonitor.
    assert tuned == {"ShoalTTFTBudgetBurnFast", "ShoalTTFTBudgetBurnSlow",
                     "ShoalFleetBudgetNearCap", "ShoalRouterFallbackSpike"}  # fmt: skip


def _without_annotations(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules minus annotations: `promtool test rules` compares annotations verbatim, and these
    tests judge expressions, durations and labels (check rules parses the templates)."""
    return [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups]  # fmt: skip


def _alert(name: str, at: str, *labels: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": lab} for lab in labels],
    }


def _counter(series: str, per_second: float, minutes: int = 120) -> dict[str, str]:
    return {"series": series, "values": f"0+{per_second * 60:g}x{minutes}"}


ML = 'namespace="ml"'

#: Synthetic series and what the alerts must say about them (values: MATRIX["monitoring"]).
RULE_TESTS: list[dict[str, Any]] = [
    {   # Fleet f falls back on 10% of requests, fleet g on 1%; g also has too little traffic
        # for h's 20% to count.
        "interval": "1m",
        "input_series": [
            _counter(f'ray_shoal_fallbacks_total{{{ML}, fleet="f", model="a", reason="overloaded"}}', 1),
            _counter(f'ray_shoal_requests_total{{{ML}, fleet="f", model="b", tier="s", api="chat", code="200"}}', 10),
            _counter(f'ray_shoal_fallbacks_total{{{ML}, fleet="g", model="a", reason="error"}}', 0.1),
            _counter(f'ray_shoal_requests_total{{{ML}, fleet="g", model="b", tier="s", api="chat", code="200"}}', 10),
            _counter(f'ray_shoal_fallbacks_total{{{ML}, fleet="h", model="a", reason="error"}}', 0.01),
            _counter(f'ray_shoal_requests_total{{{ML}, fleet="h", model="b", tier="s", api="chat", code="200"}}', 0.05),
        ],
        "alert_rule_test": [
            _alert("ShoalRouterFallbackSpike", "8m"),  # not for 10m yet
            _alert("ShoalRouterFallbackSpike", "20m",
                   {"severity": "warning", "namespace": "ml", "fleet": "f"}),
        ],
    },
    {   # 20% of tier s's first tokens come after 1 s (le written "1.0" and, Ray-style, "1");
        # tier t is within its objective.
        "interval": "1m",
        "input_series": [
            _counter(f'ray_shoal_time_to_first_token_seconds_bucket{{{ML}, fleet="f", tier="s", model="a", le="1.0"}}', 8),
            _counter(f'ray_shoal_time_to_first_token_seconds_count{{{ML}, fleet="f", tier="s", model="a"}}', 10),
            _counter(f'ray_shoal_time_to_first_token_seconds_bucket{{{ML}, fleet="g", tier="s", model="a", le="1"}}', 8),
            _counter(f'ray_shoal_time_to_first_token_seconds_count{{{ML}, fleet="g", tier="s", model="a"}}', 10),
            _counter(f'ray_shoal_time_to_first_token_seconds_bucket{{{ML}, fleet="f", tier="t", model="b", le="1.0"}}', 9.995),
            _counter(f'ray_shoal_time_to_first_token_seconds_count{{{ML}, fleet="f", tier="t", model="b"}}', 10),
        ],
        "promql_expr_test": [
            {"expr": "round(shoal:ttft_slo_errors:ratio_rate5m, 0.001)", "eval_time": "30m",
             "exp_samples": [
                 {"labels": '{namespace="ml", fleet="f", tier="s"}', "value": 0.2},
                 {"labels": '{namespace="ml", fleet="g", tier="s"}', "value": 0.2},
                 {"labels": '{namespace="ml", fleet="f", tier="t"}', "value": 0.0},
             ]},
        ],
        "alert_rule_test": [
            _alert("ShoalTTFTBudgetBurnFast", "30m",
                   {"severity": "critical", "namespace": "ml", "fleet": "f", "tier": "s"},
                   {"severity": "critical", "namespace": "ml", "fleet": "g", "tier": "s"}),
            _alert("ShoalTTFTBudgetBurnSlow", "10m"),  # needs 15m
            _alert("ShoalTTFTBudgetBurnSlow", "60m",
                   {"severity": "warning", "namespace": "ml", "fleet": "f", "tier": "s"},
                   {"severity": "warning", "namespace": "ml", "fleet": "g", "tier": "s"}),
        ],
    },
    {   # The autoscaler says f uses 95% of its budget; kube-state-metrics says k costs 24 of the
        # default budget of 25 (no spec.budget), j 5 of 40.
        "interval": "1m",
        "input_series": [
            {"series": f'shoal_autoscaler_budget_utilisation{{{ML}, fleet="f"}}', "values": "0.95x60"},
            {"series": f'shoal_autoscaler_budget_utilisation{{{ML}, fleet="e"}}', "values": "0.5x60"},
            {"series": f'shoal_fleet_cost_per_hour{{{ML}, fleet="k", customresource_kind="ModelFleet"}}', "values": "24x60"},
            {"series": f'shoal_fleet_cost_per_hour{{{ML}, fleet="j", customresource_kind="ModelFleet"}}', "values": "5x60"},
            {"series": f'shoal_fleet_budget_max_cost_per_hour{{{ML}, fleet="j", customresource_kind="ModelFleet"}}', "values": "40x60"},
        ],
        "alert_rule_test": [
            _alert("ShoalFleetBudgetNearCap", "10m"),
            _alert("ShoalFleetBudgetNearCap", "30m",
                   {"severity": "warning", "namespace": "ml", "fleet": "f"},
                   {"severity": "warning", "namespace": "ml", "fleet": "k"}),
        ],
    },
    {   # Fleet f has not been Ready for half an hour; g is Ready.
        "interval": "1m",
        "input_series": [
            {"series": f'shoal_fleet_condition{{{ML}, fleet="f", type="Ready", reason="Deploying"}}', "values": "0x40"},
            {"series": f'shoal_fleet_condition{{{ML}, fleet="f", type="Degraded", reason="Deploying"}}', "values": "0x40"},
            {"series": f'shoal_fleet_condition{{{ML}, fleet="g", type="Ready", reason="Ready"}}', "values": "1x40"},
        ],
        "alert_rule_test": [
            _alert("ShoalFleetNotReady", "10m"),
            _alert("ShoalFleetNotReady", "30m", {"severity": "warning", "namespace": "ml", "fleet": "f"}),
        ],
    },
    {   # The operator's target is down, and before that its reconciles failed.
        "interval": "1m",
        "input_series": [
            {"series": 'up{job="shoal-metrics", namespace="shoal-system", pod="shoal-abc"}', "values": "1x10 0x30"},
            _counter('shoal_operator_reconciles_total{namespace="shoal-system", kind="ModelFleet", result="error"}', 0.1, 40),
            _counter('shoal_operator_reconciles_total{namespace="shoal-system", kind="RoutingPolicy", result="ok"}', 1, 40),
        ],
        "alert_rule_test": [
            _alert("ShoalOperatorDown", "10m"),
            _alert("ShoalOperatorDown", "25m",
                   {"severity": "critical", "job": "shoal-metrics", "namespace": "shoal-system"}),
            _alert("ShoalOperatorReconcileErrors", "30m",
                   {"severity": "warning", "namespace": "shoal-system", "kind": "ModelFleet"}),
        ],
    },
]  # fmt: skip


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    groups = _without_annotations(rule_groups(MATRIX["monitoring"]))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": RULE_TESTS}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the dashboard ---------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return dict(json.loads((CHART / dashboard.DASHBOARD_FILE).read_text()))


def test_dashboard_is_well_formed_grafana_json() -> None:
    d = _dashboard()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time", "version"):
        assert key in d, key
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 30
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} == g.keys() and g["x"] + g["w"] <= 24 and g["h"] > 0
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {p['id']} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["title"] and p["description"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["expr"].strip()
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), f"{p['title']}: ${var} undefined"


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = " | ".join(p["title"].lower() for p in _dashboard()["panels"])
    for what in ("time to first token", "routing share", "cost per hour", "replicas by tier"):
        assert what in titles, what


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _as_promql(expr: str) -> str:
    """A Grafana query with its variables replaced, as Prometheus would receive it."""
    return (expr.replace("$__rate_interval", "5m").replace('"$namespace"', '".*"')
            .replace('"$fleet"', '".*"'))  # fmt: skip


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    rules = [{"record": f"shoal:dashboard_panel_{i}", "expr": _as_promql(expr)}
             for i, (_, expr) in enumerate(_dashboard_exprs())]  # fmt: skip
    (tmp_path / "dash.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = run_promtool("check", "rules", "dash.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmap_carries_the_file() -> None:
    cm = [c for c in select(render(MATRIX["monitoring"]), "ConfigMap")
          if c["metadata"]["name"].endswith("-dashboards")]  # fmt: skip
    assert len(cm) == 1
    assert json.loads(cm[0]["data"]["shoal-fleet.json"]) == _dashboard()
    assert cm[0]["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- every metric read is one that something exports --------------------------------------------


def _family_samples(registry: Any) -> set[str]:
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                    "gauge": [""], "summary": ["_count", "_sum", ""]}.get(family.type, [""])  # fmt: skip
        names |= {family.name + s for s in suffixes}
    return names


def _ksm_metrics() -> set[str]:
    cm = [c for c in select(render(MATRIX["monitoring"]), "ConfigMap")
          if c["metadata"]["name"].endswith("-kube-state-metrics")]  # fmt: skip
    config = yaml.safe_load(cm[0]["data"]["shoal-fleets.yaml"])
    return {f"{r['metricNamePrefix']}_{m['name']}" for r in config["spec"]["resources"]
            for m in r["metrics"]}  # fmt: skip


def exported_metrics() -> set[str]:
    """Names of every series Shoal's parts export, as Prometheus stores them."""
    import prometheus_client

    import shoal.operator.autoscaler
    import shoal.operator.metrics  # noqa: F401
    from shoal.serving.metrics import EngineMetrics, RouterMetrics

    serving = _family_samples(RouterMetrics("f", backend="prometheus").registry)
    serving |= _family_samples(EngineMetrics("m", backend="prometheus").registry)
    if not any(n.startswith("shoal_tenant_") for n in serving):
        # The contract's per-tenant series, until the ingress exports them (issue 13's ingress
        # side); once it exports any, it must export all the dashboard reads.
        from shoal.contract.tenants import TENANT_METRICS

        serving |= set(TENANT_METRICS)
    # In a cluster, serving metrics go through Ray: prefixed ray_, with ':' made '_'.
    ray = {"ray_" + n.replace(":", "_") for n in serving}
    operator = {n for n in _family_samples(prometheus_client.REGISTRY) if n.startswith("shoal_")}
    return ray | operator | _ksm_metrics() | {"up"}


def _metrics_in(expr: str) -> set[str]:
    unquoted = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b(?:ray|shoal)_[a-z0-9_]+\b|\bup\b(?=\{)", unquoted))


def test_every_metric_read_is_exported() -> None:
    exported = exported_metrics()
    used: dict[str, str] = {}
    for title, expr in _dashboard_exprs():
        used |= {m: f"dashboard panel {title!r}" for m in _metrics_in(expr)}
    for group in rule_groups(MATRIX["monitoring"]):
        for rule in group["rules"]:
            used |= {
                m: f"rule {rule.get('alert') or rule.get('record')}"
                for m in _metrics_in(rule["expr"])
            }
    missing = {m: where for m, where in used.items() if m not in exported}
    assert not missing, f"read but exported by nothing: {missing}"
    assert len(used) >= 15  # the check saw the queries


def _schema_at(schema: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for key in path:
        if node is None:
            return None
        if node.get("type") == "array":
            node = node["items"]
        node = (node.get("properties") or {}).get(key)
    return node


def test_kube_state_metrics_paths_exist_in_the_crd() -> None:
    """Every path the custom resource state config reads is a field of ModelFleet."""
    crd = yaml.safe_load((REPO_ROOT / "crds" / "shoal.dev_modelfleets.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["metadata"] = {"type": "object", "properties": {
        "name": {"type": "string"}, "namespace": {"type": "string"}}}  # fmt: skip
    cm = [c for c in select(render(MATRIX["monitoring"]), "ConfigMap")
          if c["metadata"]["name"].endswith("-kube-state-metrics")]  # fmt: skip
    resource = yaml.safe_load(cm[0]["data"]["shoal-fleets.yaml"])["spec"]["resources"][0]
    assert resource["groupVersionKind"] == {
        "group": "shoal.dev",
        "version": "v1alpha1",
        "kind": "ModelFleet",
    }
    for label, path in resource["labelsFromPath"].items():
        assert _schema_at(schema, path) is not None, label
    for metric in resource["metrics"]:
        gauge = metric["each"]["gauge"]
        base = _schema_at(schema, gauge["path"])
        assert base is not None, metric["name"]
        for sub in [gauge.get("valueFrom"), *(gauge.get("labelsFromPath") or {}).values()]:
            if sub:
                assert _schema_at(base if base.get("type") != "array" else base["items"], sub), (
                    metric["name"],
                    sub,
                )


def test_dashboard_reads_the_contracts_tenant_series() -> None:
    from shoal.contract.tenants import TENANT_METRICS
    from shoal.devtools.chart import dashboard

    names = (dashboard.TENANT_REQUESTS, dashboard.TENANT_TOKENS, dashboard.TENANT_COST)
    assert names == tuple(f"ray_{n}" for n in TENANT_METRICS)
