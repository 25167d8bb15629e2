"""Render the shoal chart with the Go-built helm, for the chart's unit and integration tests.

``MATRIX`` is the set of non-default values every check runs over (lint, template, the
server-side dry-run): each entry turns on a different part of the chart.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from shoal.devtools.testing import REPO_ROOT, require
from shoal.devtools.testing.controlplane import tool_path

CHART = REPO_ROOT / "charts" / "shoal"
RELEASE, NAMESPACE = "shoal", "shoal-system"

#: Named sets of non-default values, each exercising a different part of the chart.
MATRIX: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {
        "rbac": {"namespaced": True},
        "operator": {"watchNamespaces": ["team-a", "team-b"]},
    },
    "namespaced-strict": {
        "rbac": {"namespaced": True, "clusterDiscovery": False},
        "operator": {"watchNamespaces": ["team-a"]},
    },
    "some-namespaces-clusterrole": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "ha": {"replicaCount": 3},
    "ha-namespaced": {
        "replicaCount": 2,
        "rbac": {"namespaced": True},
        "operator": {"watchNamespaces": ["team-a", "team-b"]},
    },
    "peering-one-replica": {"operator": {"peering": {"enabled": True, "name": "shoal-peers"}}},
    "no-crds": {"crds": {"install": False, "keep": False, "kopfPeering": False}, "replicaCount": 2},
    "crds-not-kept": {"crds": {"keep": False}},
    "monitoring": {
        "autoscaler": {
            "prometheusUrl": "http://prometheus-operated.monitoring.svc:9090",
            "defaultBudgetPerHour": "25.00",
            "dryRun": True,
        },
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True, "allNamespaces": False},
            "prometheusRule": {"enabled": True},
            "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Shoal"}},
            "kubeStateMetrics": {
                "enabled": True,
                "serviceAccount": {"name": "kube-state-metrics", "namespace": "monitoring"},
            },
        },
    },
    "monitoring-tuned": {
        "operator": {"watchNamespaces": ["team-a"]},
        "monitoring": {
            "podMonitor": {"enabled": True, "allNamespaces": False, "interval": "30s"},
            "prometheusRule": {
                "enabled": True,
                "alerts": {
                    "fleetNotReady": {"enabled": False},
                    "sloBurn": {"objective": 0.995, "ttftThresholdSeconds": 0.5},
                    "budgetNearCap": {"ratio": 0.8, "for": "5m", "severity": "critical"},
                    "fallbackSpike": {"ratio": 0.1, "minRequestsPerSecond": 1.5},
                    "reconcileErrors": {"enabled": False},
                },
            },
        },
    },
    "alerts-off": {
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "alerts": {k: {"enabled": False} for k in ("fleetNotReady", "sloBurn",
                           "budgetNearCap", "fallbackSpike", "reconcileErrors", "operatorDown")},
            },
        },
    },
    "custom": {
        "fullnameOverride": "fleet-operator",
        "image": {
            "repository": "registry.example.com/ml/shoal-operator",
            "digest": "sha256:" + "a" * 64,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "operator": {
            "logFormat": "plain",
            "verbose": True,
            "metricsPort": 9090,
            "healthPort": 9091,
            "resyncSeconds": 120,
            "retrySeconds": 5,
            "apiTimeoutSeconds": 10,
        },
        "serving": {
            "image": "registry.example.com/ml/serving:1",
            "gpuImage": "registry.example.com/ml/serving:1-cuda",
            "rayServeEnv": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_HAPROXY_MAXCONN": "50000"},
        },
        "autoscaler": {
            "enabled": False,
            "intervalSeconds": 60,
            "staleSeconds": 300,
        },
        "tenants": {"storeFailureMode": "closed", "syncIntervalSeconds": 0.5,
                    "keyResyncSeconds": 5, "usageIntervalSeconds": 120},
        "rbac": {"tenantSecrets": True},
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
        "podSecurity": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"team": "ml"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
    },
    "no-rbac": {"rbac": {"create": False}, "serviceAccount": {"annotations": {"example.com/role": "x"}}},
}  # fmt: skip


def helm_binary() -> str:
    """The helm binary (built by hack/build-control-plane.sh), or a visible skip."""
    path = tool_path("helm")
    require(path is not None, "helm not built: run hack/build-control-plane.sh")
    assert path is not None
    return path


def run_helm(
    *args: str, values: dict[str, Any] | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run helm; ``values`` go in through a values file (types stay as written)."""
    with tempfile.TemporaryDirectory() as tmp:
        extra: list[str] = []
        if values is not None:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            extra = ["-f", str(path)]
        result = subprocess.run(
            [helm_binary(), *args, *extra], capture_output=True, text=True, timeout=timeout
        )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@cache
def _template(values_json: str, release: str, namespace: str) -> str:
    return run_helm(
        "template", release, str(CHART), "--namespace", namespace,
        values=json.loads(values_json),
    ).stdout  # fmt: skip


def render_text(
    values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> str:
    """The manifests ``helm template`` renders (cached per values)."""
    return _template(json.dumps(values or {}, sort_keys=True), release, namespace)


def render(
    values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """The rendered objects."""
    text = render_text(values, release=release, namespace=namespace)
    return [d for d in yaml.safe_load_all(text) if d]


def select(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of ``kind`` (and ``name``) among ``docs``."""
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``)."""
    found = select(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator container of the Deployment."""
    return dict(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
