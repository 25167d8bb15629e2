"""The Grafana dashboard the chart ships (``charts/shoal/dashboards/shoal-fleet.json``).

Written as code so that panel ids and grid positions are computed rather than hand-kept, and
so that tests can read every PromQL expression back (``shoal chart --check`` fails on drift
between this module and the file). The chart puts the file into a ConfigMap that Grafana's
dashboard sidecar picks up.

Where the numbers come from:

- the serving layer's metrics (:mod:`shoal.serving.metrics`), exported by Ray on every Ray
  node's metrics port with Ray's ``ray_`` prefix and scraped by the chart's PodMonitor;
- fleet state (readiness, replicas per model and tier, cost per hour, budget) from the
  ModelFleet objects through kube-state-metrics' custom resource state config, which the
  chart also ships (``monitoring.kubeStateMetrics``);
- per-tenant requests, tokens and estimated USD from the ingress (labels ``fleet`` and
  ``tenant``: the Tenant object's name, never a key), in the Tenants row;
- the operator's own metrics (:mod:`shoal.operator.metrics`) and its autoscaler's
  (:mod:`shoal.operator.autoscaler`), through the ServiceMonitor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: File of the dashboard inside the chart.
DASHBOARD_FILE = Path("dashboards") / "shoal-fleet.json"
UID = "shoal-fleet"

# Metric names. Serving metrics go through Ray's metrics pipeline, which adds "ray_".
REQUESTS = "ray_shoal_requests_total"
REJECTED = "ray_shoal_rejected_requests_total"
DECISIONS = "ray_shoal_routing_decisions_total"
FALLBACKS = "ray_shoal_fallbacks_total"
SPILLED = "ray_shoal_spilled_requests_total"
ROUTING_LATENCY = "ray_shoal_routing_latency_seconds_bucket"
TTFT = "ray_shoal_time_to_first_token_seconds_bucket"
DURATION = "ray_shoal_request_duration_seconds_bucket"
TOKENS = "ray_shoal_tokens_total"
COST = "ray_shoal_cost_usd_total"
REFERENCE_COST = "ray_shoal_reference_cost_usd_total"
IN_FLIGHT = "ray_shoal_requests_in_flight"
# Per-tenant series of the ingress (labels fleet, tenant; requests also model and code,
# tokens also kind).
# (shoal.contract.tenants names them; this package imports only the API, a test holds the
# two to the same names.)
TENANT_REQUESTS = "ray_shoal_tenant_requests_total"
TENANT_TOKENS = "ray_shoal_tenant_tokens_total"
TENANT_COST = "ray_shoal_tenant_cost_usd_total"
#: Engines' queue, vLLM's or llama.cpp's (both export vLLM's metric names under their prefix).
ENGINE_WAITING = '__name__=~"ray_(vllm|llamacpp)_num_requests_waiting"'
# Fleet state through kube-state-metrics (see templates/kube-state-metrics.yaml).
FLEET_CONDITION = "shoal_fleet_condition"
FLEET_COST = "shoal_fleet_cost_per_hour"
FLEET_BUDGET = "shoal_fleet_budget_max_cost_per_hour"
MODEL_READY = "shoal_fleet_model_ready_replicas"
MODEL_DESIRED = "shoal_fleet_model_desired_replicas"
# The operator's own metrics, and its autoscaler's (labels namespace and fleet of the fleet).
DESIRED = "shoal_autoscaler_desired_replicas"
SCALING = "shoal_autoscaler_decisions_total"
BUDGET_USE = "shoal_autoscaler_budget_utilisation"
BUDGET_BINDING = "shoal_autoscaler_budget_binding"
ALPHA = "shoal_autoscaler_effective_alpha"
RECONCILES = "shoal_operator_reconciles_total"
RECONCILE_SECONDS = "shoal_operator_reconcile_duration_seconds_bucket"
FITS = "shoal_operator_router_fits_total"

SEL = '{namespace=~"$namespace", fleet=~"$fleet"}'
READY = 'type="Ready"'
NOT_2XX = 'code!~"2.."'
REFUSED = 'code=~"40[139]"'
CHANGES = 'direction!="hold"'
RATE = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _sel(extra: str = "") -> str:
    inner = SEL[1:-1] + (f", {extra}" if extra else "")
    return "{" + inner + "}"


def _rate(metric: str, extra: str = "") -> str:
    return f"rate({metric}{_sel(extra)}[{RATE}])"


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) ({_rate(metric)}))"


@dataclass
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""


@dataclass
class Panel:
    """A panel before layout."""

    title: str
    description: str
    targets: list[Target]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    stacked: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """A titled row of panels."""

    title: str
    panels: list[Panel]


def _rows() -> list[Row]:
    per_model_rps = f"sum by (model) ({_rate(REQUESTS)})"
    return [
        Row("Overview", [
            Panel("Fleets ready", "Fleets whose Ready condition is True, of all fleets "
                  "(kube-state-metrics).",
                  [Target(f"sum({FLEET_CONDITION}{_sel(READY)})", "ready"),
                   Target(f"count({FLEET_CONDITION}{_sel(READY)})", "fleets")],
                  kind="stat", width=6, height=5),
            Panel("Requests per second", "Requests answered by any model.",
                  [Target(f"sum({_rate(REQUESTS)})", "req/s")], kind="stat", unit="reqps",
                  width=6, height=5),
            Panel("Cost per hour", "Cost of the running replicas in USD per hour, from the "
                  "fleets' status (kube-state-metrics).",
                  [Target(f"sum({FLEET_COST}{_sel()})", "USD/h")], kind="stat",
                  unit="currencyUSD", width=6, height=5),
            Panel("Budget used", "Cost per hour over the budget's cap, for fleets with a "
                  "budget.",
                  [Target(f"sum({FLEET_COST}{_sel()} and on (namespace, fleet) "
                          f"{FLEET_BUDGET}{_sel()}) / sum({FLEET_BUDGET}{_sel()})", "used")],
                  kind="stat", unit="percentunit", width=6, height=5),
        ]),
        Row("Latency", [
            Panel("Time to first token p95 by tier", "95th percentile of the time from a "
                  "request's arrival to its first token, per cost tier; compare with the "
                  "tier's slo.ttftP95Milliseconds.",
                  [Target(_quantile(0.95, TTFT, "tier"), "{{tier}}")], unit="s"),
            Panel("Time to first token, whole fleet", "p50, p95 and p99 over every model.",
                  [Target(_quantile(q, TTFT, "fleet"), f"p{int(q * 100)} {{{{fleet}}}}")
                   for q in (0.5, 0.95, 0.99)], unit="s"),
            Panel("Request duration p95 by model", "95th percentile of the time to the last "
                  "byte of the answer.",
                  [Target(_quantile(0.95, DURATION, "model"), "{{model}}")], unit="s"),
            Panel("Routing latency p99", "Time the router takes to rank the models, embedding "
                  "included.",
                  [Target(_quantile(0.99, ROUTING_LATENCY, "strategy"), "{{strategy}}")],
                  unit="s"),
        ]),
        Row("Routing", [
            Panel("Routing share by model", "Share of router decisions that ranked each "
                  "model first.",
                  [Target(f"sum by (model) ({_rate(DECISIONS)}) / ignoring (model) "
                          f"group_left sum({_rate(DECISIONS)})", "{{model}}")],
                  unit="percentunit", stacked=True),
            Panel("Requests per second by model", "Requests answered per model (after "
                  "fallbacks).",
                  [Target(per_model_rps, "{{model}}")], unit="reqps", stacked=True),
            Panel("Fallbacks per answered request", "Requests moved down the ranked list, "
                  "per request answered, by the reason the first choice could not serve.",
                  [Target(f"sum by (reason) ({_rate(FALLBACKS)}) / ignoring (reason) "
                          f"group_left sum({_rate(REQUESTS)})", "{{reason}}")],
                  unit="percentunit"),
            Panel("Errors and rejections", "Answers with a non-2xx code per model, and "
                  "requests refused before any model answered.",
                  [Target(f"sum by (model, code) ({_rate(REQUESTS, NOT_2XX)})",
                          "{{model}} {{code}}"),
                   Target(f"sum by (code) ({_rate(REJECTED)})", "rejected {{code}}")],
                  unit="reqps"),
            Panel("Spilled requests by model pair", "Routed requests sent to the next-best "
                  "model because the router's first choice would have broken its latency "
                  "objective (policy spillover), from the first choice to the model that "
                  "took them.",
                  [Target(f"sum by (model, to) ({_rate(SPILLED)})", "{{model}} -> {{to}}")],
                  unit="reqps"),
            Panel("Spilled share of routed requests", "Per first choice, the share of the "
                  "requests the router ranked it first for that spilled over to another "
                  "model (they stay its demand: the autoscaler sizes it for them).",
                  [Target(f"sum by (model) ({_rate(SPILLED)}) / "
                          f"sum by (model) ({_rate(DECISIONS)})", "{{model}}")],
                  unit="percentunit"),
        ]),
        Row("Cost", [
            Panel("Cost per hour and budget", "Cost of the running replicas per fleet "
                  "against its budget cap (kube-state-metrics).",
                  [Target(f"sum by (namespace, fleet) ({FLEET_COST}{_sel()})",
                          "{{fleet}} cost"),
                   Target(f"sum by (namespace, fleet) ({FLEET_BUDGET}{_sel()})",
                          "{{fleet}} budget")],
                  unit="currencyUSD"),
            Panel("Cost per hour of answered requests by tier", "What answered requests "
                  "cost: token bills of models served outside the fleet, and for the "
                  "fleet's own the replica time requests held at each tier's price (an "
                  "estimate): what the traffic used of what is paid for.",
                  [Target(f"sum by (tier) ({_rate(COST)}) * 3600", "{{tier}}")],
                  unit="currencyUSD", stacked=True),
            Panel("Spend and savings", "What answered requests cost per hour against what "
                  "the same tokens would have cost at the fleet's savings reference "
                  "(spec.savings); the share saved is 1 - spend / reference.",
                  [Target(f"sum by (fleet) ({_rate(COST)}) * 3600", "{{fleet}} spend"),
                   Target(f"sum by (fleet) ({_rate(REFERENCE_COST)}) * 3600",
                          "{{fleet}} reference")],
                  unit="currencyUSD"),
            Panel("Tokens per second by model", "Prompt and completion tokens.",
                  [Target(f"sum by (model, kind) ({_rate(TOKENS)})", "{{model}} {{kind}}")],
                  unit="short"),
        ]),
        Row("Tenants", [
            Panel("Requests per second by tenant", "Requests each tenant sent, answered or "
                  "not (by the Tenant's name; `shoal usage` prints the last hour).",
                  [Target(f"sum by (tenant) ({_rate(TENANT_REQUESTS)})", "{{tenant}}")],
                  unit="reqps", stacked=True, width=6),
            Panel("Refused requests by tenant", "Requests refused for a tenant's key, limits "
                  "or budget (401, 403, 429), per tenant and code.",
                  [Target(f"sum by (tenant, code) ({_rate(TENANT_REQUESTS, REFUSED)})",
                          "{{tenant}} {{code}}")],
                  unit="reqps", width=6),
            Panel("Tokens per second by tenant", "Prompt and completion tokens per tenant.",
                  [Target(f"sum by (tenant, kind) ({_rate(TENANT_TOKENS)})",
                          "{{tenant}} {{kind}}")],
                  unit="short", width=6),
            Panel("Estimated cost per hour by tenant", "Replica time the tenant's requests "
                  "held, at each tier's price, in USD per hour; compare with the Tenant's "
                  "spec.budget.maxCostPerHour.",
                  [Target(f"sum by (tenant) ({_rate(TENANT_COST)}) * 3600", "{{tenant}}")],
                  unit="currencyUSD", stacked=True, width=6),
        ]),
        Row("Capacity", [
            Panel("Ready replicas by tier", "Replicas serving traffic, per cost tier "
                  "(kube-state-metrics).",
                  [Target(f"sum by (tier) ({MODEL_READY}{_sel()})", "{{tier}}")],
                  stacked=True),
            Panel("Desired and ready replicas by model", "What the fleet wants against what "
                  "serves (kube-state-metrics).",
                  [Target(f"sum by (model) ({MODEL_DESIRED}{_sel()})", "{{model}} desired"),
                   Target(f"sum by (model) ({MODEL_READY}{_sel()})", "{{model}} ready")]),
            Panel("Requests in flight by model", "Requests the ingress is waiting on, per "
                  "model.",
                  [Target(f"sum by (model) ({IN_FLIGHT}{_sel()})", "{{model}}")],
                  stacked=True),
            Panel("Engine queue by model", "Requests waiting for a batch slot inside the "
                  "engines (vLLM and the simulator).",
                  [Target(f"sum by (model_name) ({_sel(ENGINE_WAITING)})", "{{model_name}}")]),
        ]),
        Row("Autoscaler", [
            Panel("Autoscaler: desired replicas by model", "Replicas the autoscaler wants "
                  "(applied in Active mode, only reported in DryRun).",
                  [Target(f"max by (model, mode) ({DESIRED}{_sel()})", "{{model}} {{mode}}")]),
            Panel("Scaling decisions", "Autoscaler decisions that changed a model's "
                  "replicas, by direction.",
                  [Target(f"sum by (direction) (increase({SCALING}{_sel(CHANGES)}[{RATE}]))",
                          "{{direction}}")]),
            Panel("Budget utilisation", "Cost per hour of the decided replicas over the "
                  "fleet's budget; binding is 1 while the budget holds replicas back.",
                  [Target(f"max by (namespace, fleet) ({BUDGET_USE}{_sel()})",
                          "{{fleet}} utilisation"),
                   Target(f"max by (namespace, fleet) ({BUDGET_BINDING}{_sel()})",
                          "{{fleet}} binding")],
                  unit="percentunit"),
            Panel("Effective quality weight (alpha)", "The router's alpha in force; lower than "
                  "the policy's while the budget binds.",
                  [Target(f"max by (namespace, fleet) ({ALPHA}{_sel()})", "{{fleet}}")]),
        ]),
        Row("Operator", [
            Panel("Reconciles per second", "Reconciles by kind and result: ok, waiting (for "
                  "a dependency), blocked (a spec problem the status explains), error "
                  "(unexpected).",
                  [Target(f"sum by (kind, result) (rate({RECONCILES}[{RATE}]))",
                          "{{kind}} {{result}}")],
                  unit="ops", width=8),
            Panel("Reconcile duration p95", "Time to reconcile one object.",
                  [Target(f"histogram_quantile(0.95, sum by (le, kind) "
                          f"(rate({RECONCILE_SECONDS}[{RATE}])))", "{{kind}}")],
                  unit="s", width=8),
            Panel("Router fits", "Router fits per hour by result.",
                  [Target(f"sum by (result) (increase({FITS}[1h]))", "{{result}}")],
                  width=8),
        ]),
    ]  # fmt: skip


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    options: dict[str, Any]
    if p.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    else:
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if p.stacked else 0,
            "stacking": {"mode": "normal" if p.stacked else "none", "group": "A"},
            "spanNulls": False,
        }
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    options.update(p.options)
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": t.expr,
                "legendFormat": t.legend or "__auto",
                "range": True,
            }
            for i, t in enumerate(p.targets)
        ],
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-query"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in _rows():
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x, row_height = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_json(p, pid, x, y))
            pid, x, row_height = pid + 1, x + p.width, max(row_height, p.height)
        y += row_height
    return {
        "uid": UID,
        "title": "Shoal / Fleets",
        "description": "Latency, routing, cost and capacity of Shoal fleets, and the operator.",
        "tags": ["shoal", "llm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "refresh": 1,
                    "hide": 0,
                    "current": {},
                    "includeAll": False,
                    "multi": False,
                    "regex": "",
                },
                _variable("namespace", "Namespace", f"label_values({REQUESTS}, namespace)"),
                _variable(
                    "fleet", "Fleet", f'label_values({REQUESTS}{{namespace=~"$namespace"}}, fleet)'
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    """The text of the dashboard file, stable byte for byte."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def write_dashboard(chart_dir: Path) -> Path:
    """Write the dashboard into ``chart_dir``; returns its path."""
    path = chart_dir / DASHBOARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path


def dashboard_is_current(chart_dir: Path) -> bool:
    """Whether ``chart_dir``'s dashboard matches this module."""
    path = chart_dir / DASHBOARD_FILE
    return path.exists() and path.read_text() == render()
