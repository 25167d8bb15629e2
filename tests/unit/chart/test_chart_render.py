"""The chart lints and renders for the default values and a matrix of others, and what it
renders holds its promises: a hardened Deployment wired to the operator's flags and settings,
peering exactly when several replicas run, least-privilege RBAC, the generated CRDs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from tests.unit.chart.helm import (
    CHART,
    MATRIX,
    NAMESPACE,
    RELEASE,
    container,
    one,
    render,
    run_helm,
    select,
)

from shoal.devtools.chart.values import Values
from shoal.devtools.testing import REPO_ROOT

ENTRIES = sorted(MATRIX)


def values_of(name: str) -> Values:
    """The full values of a matrix entry (defaults filled in)."""
    from tests.unit.chart.test_chart_values import _merge, _values_yaml

    return Values.model_validate(_merge(_values_yaml(), MATRIX[name]))


@pytest.mark.parametrize("name", ENTRIES)
def test_helm_lint_strict(name: str) -> None:
    result = run_helm("lint", "--strict", str(CHART), values=MATRIX[name])
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("name", ENTRIES)
def test_renders_well_formed_objects(name: str) -> None:
    docs = render(MATRIX[name])
    assert docs, "nothing rendered"
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                      "ClusterKopfPeering"}  # fmt: skip
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= d.keys(), d
        meta = d["metadata"]
        assert len(meta["name"]) <= 63, meta["name"]
        if d["kind"] in cluster_scoped:
            assert "namespace" not in meta, d["kind"]
        else:
            assert meta.get("namespace"), f"{d['kind']}/{meta['name']} has no namespace"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize("name", ENTRIES)
def test_deployment_is_hardened(name: str) -> None:
    docs = render(MATRIX[name])
    v = values_of(name)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == v.pod_security.run_as_user != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # The read-only root filesystem leaves /tmp writable, and HOME points there.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert c["resources"]["requests"] == {
        k: val for k, val in v.resources.requests.model_dump().items() if val
    }
    assert c["resources"].get("limits", {}) == {
        k: val for k, val in v.resources.limits.model_dump().items() if val
    }
    # Probes call the liveness endpoint the operator is told to open.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": v.operator.metrics_port, "health": v.operator.health_port}
    assert f"--liveness=http://0.0.0.0:{v.operator.health_port}/healthz" in c["args"]
    assert f"--metrics-port={v.operator.metrics_port}" in c["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


@pytest.mark.parametrize("name", ENTRIES)
def test_args_parse_as_the_operator_reads_them(name: str) -> None:
    from shoal.operator.__main__ import parse_args

    v = values_of(name)
    args = parse_args(container(render(MATRIX[name]))["args"])
    assert args.namespace == v.operator.watch_namespaces
    assert args.log_format == v.operator.log_format
    assert args.metrics_port == v.operator.metrics_port
    assert args.verbose == v.operator.verbose
    peering = v.replica_count > 1 or v.operator.peering.enabled
    assert args.peering == ((v.operator.peering.name or "shoal") if peering else "")


@pytest.mark.parametrize("name", ENTRIES)
def test_env_reaches_the_operator_settings(name: str) -> None:
    """The Deployment's env, read by the operator's own settings loader, gives the values."""
    from shoal.operator.config import OperatorConfig

    v = values_of(name)
    env = {e["name"]: e["value"] for e in container(render(MATRIX[name]))["env"] if "value" in e}
    config = OperatorConfig.from_env(env)
    assert config.resync_seconds == v.operator.resync_seconds
    assert config.retry_seconds == v.operator.retry_seconds
    assert config.api_timeout_seconds == v.operator.api_timeout_seconds
    assert config.prometheus_url == v.autoscaler.prometheus_url
    assert config.autoscaler_enabled == v.autoscaler.enabled
    assert config.autoscaler_interval_seconds == v.autoscaler.interval_seconds
    assert config.autoscaler_dry_run == v.autoscaler.dry_run
    assert config.autoscaler_stale_seconds == v.autoscaler.stale_seconds
    assert config.autoscaler_headroom_percent == v.autoscaler.headroom_percent
    assert config.autoscaler_burst_window_seconds == v.autoscaler.burst_window_seconds
    assert config.autoscaler_max_scale_up_factor == v.autoscaler.max_scale_up_factor
    assert config.autoscaler_queue_drain_seconds == v.autoscaler.queue_drain_seconds
    assert config.autoscaler_cold_start_seconds == v.autoscaler.cold_start_seconds
    assert config.autoscaler_step_sigma == v.autoscaler.step_sigma
    assert config.autoscaler_release_sigma == v.autoscaler.release_sigma
    assert config.autoscaler_spill_bridge == v.autoscaler.spill_bridge
    assert config.default_budget_per_hour == (v.autoscaler.default_budget_per_hour or None)
    assert config.tenant_store_failure_mode == v.tenants.store_failure_mode
    assert config.tenant_sync_interval_seconds == v.tenants.sync_interval_seconds
    assert config.tenant_key_resync_seconds == v.tenants.key_resync_seconds
    assert config.tenant_usage_interval_seconds == v.tenants.usage_interval_seconds
    assert config.serving_image == (v.serving.image or f"localhost/shoal-serving:{_app()}")
    assert config.gpu_image == (v.serving.gpu_image or f"localhost/shoal-serving:{_app()}-gpu")
    from shoal.contract import RAY_SERVE_ENV

    assert config.ray_serve_env == {**RAY_SERVE_ENV, **v.serving.ray_serve_env}
    assert config.kuberay_namespace == v.serving.kuberay_namespace == "kuberay-system"
    refs = {e["name"]: e.get("valueFrom") for e in container(render(MATRIX[name]))["env"]}
    assert refs["SHOAL_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def _app() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def test_images() -> None:
    assert container(render())["image"] == f"localhost/shoal-operator:{_app()}"
    assert container(render({"image": {"tag": "dev"}}))["image"].endswith("shoal-operator:dev")
    c = container(render(MATRIX["custom"]))
    assert c["image"] == "registry.example.com/ml/shoal-operator@sha256:" + "a" * 64
    assert c["imagePullPolicy"] == "Always"
    env = {
        e["name"]: e.get("value") for e in container(render({"image": {"repository": "op"}}))["env"]
    }
    assert env["SHOAL_SERVING_IMAGE"] == f"shoal-serving:{_app()}"


@pytest.mark.parametrize("name", ENTRIES)
def test_peering_exactly_with_several_replicas(name: str) -> None:
    docs = render(MATRIX[name])
    v = values_of(name)
    deployment = one(docs, "Deployment")
    peering = v.replica_count > 1 or v.operator.peering.enabled
    peers = select(docs, "ClusterKopfPeering") + select(docs, "KopfPeering")
    crds = {d["metadata"]["name"] for d in select(docs, "CustomResourceDefinition")}
    kopf_crds = {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    if not peering:
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert not peers and not crds & kopf_crds
        return
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {e["name"]: e.get("valueFrom") for e in container(docs)["env"]}
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert (kopf_crds <= crds) == v.crds.kopf_peering
    name_ = v.operator.peering.name or (v.fullname_override or "shoal")
    # Peering objects come from a hook, after the CRDs exist; one per watched namespace.
    if v.operator.watch_namespaces:
        assert sorted(p["metadata"]["namespace"] for p in peers) == sorted(
            v.operator.watch_namespaces
        )
        assert {p["kind"] for p in peers} == {"KopfPeering"}
    else:
        assert [p["kind"] for p in peers] == ["ClusterKopfPeering"]
    for p in peers:
        assert p["metadata"]["name"] == name_
        assert "post-install" in p["metadata"]["annotations"]["helm.sh/hook"]
    if v.replica_count > 1:
        assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def _rules(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{d['kind']}/{d['metadata'].get('namespace', '')}/{d['metadata']['name']}", r)
            for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]  # fmt: skip


@pytest.mark.parametrize("name", ENTRIES)
def test_rbac_has_no_wildcards(name: str) -> None:
    for where, rule in _rules(render(MATRIX[name])):
        for field in ("verbs", "resources", "apiGroups"):
            assert all("*" not in item for item in rule.get(field, [])), (where, rule)
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, (where, rule)
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), (where, rule)


@pytest.mark.parametrize("name", ENTRIES)
def test_rbac_scope_follows_the_mode(name: str) -> None:
    docs = render(MATRIX[name])
    v = values_of(name)
    roles, cluster_roles = select(docs, "Role"), select(docs, "ClusterRole")
    bindings = select(docs, "RoleBinding") + select(docs, "ClusterRoleBinding")
    if v.monitoring.kube_state_metrics.enabled:  # kube-state-metrics' read access, not ours
        cluster_roles = [
            r for r in cluster_roles if not r["metadata"]["name"].endswith("-kube-state-metrics")
        ]
        bindings = [
            b for b in bindings if not b["metadata"]["name"].endswith("-kube-state-metrics")
        ]
    if not v.rbac.create:
        assert not roles and not cluster_roles and not bindings
        return
    sa = v.service_account.name or (v.fullname_override or "shoal")
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        assert b["roleRef"]["name"] in {r["metadata"]["name"] for r in roles + cluster_roles}
    if not v.rbac.namespaced:
        assert not roles and len(cluster_roles) == 1
        return
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(v.operator.watch_namespaces)
    # Namespace-scoped: anything cluster-wide is read-only discovery, and only if asked for.
    assert len(cluster_roles) == int(v.rbac.cluster_discovery)
    for role in cluster_roles:
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= {"list", "watch"}
            assert set(rule["resources"]) <= {"namespaces", "customresourcedefinitions"}


def test_secrets_get_only_where_a_value_asks_for_it() -> None:
    """Secrets: get by name, and only with rbac.embedderSecrets or rbac.tenantSecrets; create
    (never read) for the fleets' feedback keys unless rbac.feedbackKeys is off."""

    def secret_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for _, r in _rules(render(values)) if "secrets" in r["resources"]]

    assert [r["verbs"] for r in secret_rules({})] == [["create"]]
    assert secret_rules({"rbac": {"feedbackKeys": False}}) == []
    for flag in ("embedderSecrets", "tenantSecrets"):
        (rule,) = secret_rules({"rbac": {flag: True, "feedbackKeys": False}})
        assert rule["verbs"] == ["get"] and rule["resources"] == ["secrets"]
    routes = [r for _, r in _rules(render()) if "httproutes" in r["resources"]]
    assert routes and routes[0]["apiGroups"] == ["gateway.networking.k8s.io"]
    tenants = [r for _, r in _rules(render()) if "tenants/status" in r["resources"]]
    assert tenants and tenants[0]["verbs"] == ["patch"]


def test_service_account_and_its_use() -> None:
    docs = render()
    sa = one(docs, "ServiceAccount")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == "shoal"
    custom = render(MATRIX["custom"])
    assert not select(custom, "ServiceAccount")
    assert (
        one(custom, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing-sa"
    )


def test_metrics_service_and_monitor_select_the_operator() -> None:
    docs = render(MATRIX["monitoring"])
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"  # KubeRay's port name
    # Namespace, fleet and pod come from the pod's metadata, never from what the pod exports
    # (the integration tests' Prometheus scrapes with the same relabelings).
    from shoal.devtools.testing.prometheus import POD_RELABELINGS

    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    assert endpoint["honorLabels"] is False
    assert endpoint["relabelings"] == POD_RELABELINGS
    assert one(render(MATRIX["monitoring-tuned"]), "PodMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a"]
    }


def test_monitoring_objects_only_when_asked_for() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not any(
        d["metadata"]["name"].endswith("-dashboards") for d in select(render(), "ConfigMap")
    )
    kinds = {d["kind"] for d in render(MATRIX["monitoring"])}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds


def _generated_crds() -> dict[str, dict[str, Any]]:
    return {
        yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
        for p in sorted((REPO_ROOT / "crds").glob("*.yaml"))
    }


@pytest.mark.parametrize("name", ["default", "crds-not-kept", "no-crds"])
def test_chart_crds_are_the_generated_crds(name: str) -> None:
    v = values_of(name)
    rendered = {d["metadata"]["name"]: d for d in select(render(MATRIX[name]), "CustomResourceDefinition")
                if d["spec"]["group"] == "shoal.dev"}  # fmt: skip
    if not v.crds.install:
        assert rendered == {}
        return
    generated = _generated_crds()
    assert rendered.keys() == generated.keys()
    for crd_name, crd in rendered.items():
        assert crd["spec"] == generated[crd_name]["spec"], crd_name
        keep = (crd["metadata"].get("annotations") or {}).get("helm.sh/resource-policy")
        assert keep == ("keep" if v.crds.keep else None)


def test_equal_ports_fail_with_a_message() -> None:
    result = run_helm("template", RELEASE, str(CHART), check=False,
                      values={"operator": {"metricsPort": 9000, "healthPort": 9000}})  # fmt: skip
    assert result.returncode != 0
    assert "operator.metricsPort and operator.healthPort must differ" in result.stderr


def test_notes_are_in_the_chart() -> None:
    """NOTES.txt renders only at install; the integration tests install. Here: it exists and
    tells the user the next steps."""
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for step in (
        "rollout status",
        "kuberay",
        "kubectl apply -f examples/quickstart.yaml",
        "/v1/chat/completions",
    ):
        assert step in notes
