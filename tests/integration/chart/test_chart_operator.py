"""The operator runs under the chart's identity and RBAC, as the chart's Deployment starts it.

Each test ``helm install`` s the chart into the test control plane, then starts
``python -m shoal.operator`` with the rendered Deployment's args and env (POD_ID filled in as
the Downward API would), authenticated with the token of the chart's ServiceAccount, and
waits for its liveness endpoint as the probes would. The operator then fits a router,
reconciles a fleet to Ready (the test plays KubeRay: no controllers run here), and deletes
both. The audit log of that identity must show no forbidden request and no permission the
chart grants but the operator never used: a missing verb and a superfluous one both fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.api.v1alpha1.tenant import API_KEY_LABEL
from shoal.devtools.testing.controlplane import ControlPlane, free_port
from shoal.devtools.testing.embeddings import serve_embeddings
from shoal.operator.sources import ALLOWED_HOSTS_ANNOTATION, SECRET_LABEL
from tests.integration.chart.conftest import (
    CLUSTERWIDE,
    HA,
    NAMESPACED,
    STRICT,
    Access,
    Install,
    OperatorProcess,
    accesses,
    granted,
    helm_install,
    operator_values,
    start_operator,
)
from tests.integration.operator.conftest import (
    Cluster,
    calibration_configmap,
    fleet,
    policy,
    wait_for,
)
from tests.unit.chart.helm import render

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: kopf's fallbacks when it may not read namespaces and CRDs cluster-wide (strict namespace
#: mode): it logs a warning and works with the namespaces it was given and the CRDs it found.
KOPF_FALLBACKS: frozenset[Access] = frozenset(
    {
        ("list", "", "namespaces"),
        ("watch", "", "namespaces"),
        ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
    }
)


def _ready(cluster: Cluster, kind: str, name: str) -> bool:
    c = cluster.condition(kind, name, "Ready")
    return bool(c and c["status"] == "True")


@pytest.fixture(scope="module")
def embeddings() -> Iterator[str]:
    """An OpenAI-compatible ``/v1/embeddings`` endpoint on loopback (hashed bag of words).

    The policies of these tests fit their router through it rather than through the
    in-process MiniLM model, which takes minutes on a busy two-core machine: these tests are
    about permissions, and the fit's Kubernetes side (calibration ConfigMap read, artifact
    ConfigMap applied, status written) is the same either way."""
    with serve_embeddings() as endpoint:
        yield endpoint.url


def _fitted_policy(embeddings: str, api_key: str | None = None) -> list[dict[str, Any]]:
    """Calibration data and a cluster policy that fits its router through ``embeddings``
    (with ``api_key``: read from a Secret the policy names)."""
    embedder: dict[str, Any] = {"type": "openai", "endpoint": embeddings, "model": "hash"}
    if api_key is None:
        return [calibration_configmap(), policy(embedder=embedder)]
    embedder["apiKeySecretRef"] = {"name": "embed", "key": "token"}
    # Marked for Shoal by its owner, for the embedding endpoint's host only.
    meta = {
        "name": "embed",
        "labels": {SECRET_LABEL: "true"},
        "annotations": {ALLOWED_HOSTS_ANNOTATION: "127.0.0.1"},
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": meta,
              "stringData": {"token": api_key}}  # fmt: skip
    return [secret, calibration_configmap(), policy(embedder=embedder)]


#: A tenant's API key (48 characters, as `shoal tenant key` makes them).
TENANT_KEY = "cH4rTt3nAntK3y0fF0rtyE1ghtCh4r4ct3rsL0ng000000000"


def _tenant(fleet_name: str) -> list[dict[str, Any]]:
    """A tenant of the fleet and its key's Secret, marked for Shoal by its owner."""
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "team-key", "labels": {API_KEY_LABEL: "true"}},
              "stringData": {"key": TENANT_KEY}}  # fmt: skip
    tenant = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team"},
              "spec": {"fleetRef": {"name": fleet_name},
                       "apiKeys": [{"secretRef": {"name": "team-key", "key": "key"}}]}}  # fmt: skip
    return [secret, tenant]


def serve_and_retire(
    cluster: Cluster, embeddings: str, name: str = "f", api_key: str | None = None
) -> dict[str, Any]:
    """A fitted policy and a fleet with a tenant and a Gateway's HTTPRoute through their life:
    created, Ready, deleted. The fleet as it was when Ready."""
    cluster.apply(*_fitted_policy(embeddings, api_key))
    wait_for("the router fit", lambda: _ready(cluster, "rpol", "p"), 120)
    gateway = {"parentRefs": [{"name": "public"}]}
    cluster.apply(*_tenant(name), fleet(name, budget={"maxCostPerHour": "10.00"},
                                        access={"mode": "Tenants"}, serving={"gateway": gateway}))  # fmt: skip
    wait_for("the RayService", lambda: cluster.get("rayservice", name), 90)
    wait_for("the HTTPRoute", lambda: cluster.get("httproute", name), 30)
    wait_for("the tenant to be Ready", lambda: _ready(cluster, "tenant", "team"), 60)
    cluster.play_kuberay(name)  # the test plays KubeRay's part
    wait_for("the fleet to be Ready", lambda: _ready(cluster, "fleet", name), 90)
    ready = cluster.get("fleet", name)
    assert ready is not None
    assert TENANT_KEY not in json.dumps(cluster.get("rayservice", name))
    cluster.delete("tenant", "team")
    cluster.delete("fleet", name)  # the operator's finalizer deletes the children first
    assert cluster.get("rayservice", name) is None and cluster.get("service", name) is None
    assert cluster.get("httproute", name) is None
    cluster.delete("rpol", "p")
    assert cluster.names("configmap") == ["cal"]  # artifacts and router ConfigMaps deleted
    return ready


def audit(
    cp: ControlPlane,
    where: Install,
    values: dict[str, Any],
    allowed_forbidden: frozenset[Access] = frozenset(),
) -> None:
    """No request of ``where``'s identity was forbidden (beyond ``allowed_forbidden``), and
    every permission the chart grants it was used."""
    events = cp.audit_events(where.user)
    assert events, "nothing audited: did the operator run as the ServiceAccount?"
    forbidden = accesses(events, code=403)
    assert forbidden <= allowed_forbidden, (
        f"forbidden requests: {sorted(forbidden - allowed_forbidden)}"
    )
    docs = render(values, release=where.release, namespace=where.namespace)
    unused = granted(docs) - accesses(events)
    assert not unused, f"granted but never used: {sorted(unused)}"


@contextmanager
def _log_on_failure(*ops: OperatorProcess) -> Iterator[None]:
    """Show the operators' logs when the block fails."""
    try:
        yield
    except BaseException:
        for op in ops:
            print(f"--- log of {op.pod} ---\n{op.output()[-6000:]}")
        raise


def _install(cp: ControlPlane, where: Install, values: dict[str, Any]) -> dict[str, Any]:
    values = operator_values({"crds": {"install": False}, **values})
    helm_install(cp, where, values)
    return values


def _ksm_series(config: dict[str, Any], obj: dict[str, Any]) -> dict[str, list[float]]:
    """What kube-state-metrics would export for ``obj`` under ``config`` (values only)."""

    def at(node: Any, path: list[str]) -> Any:
        for key in path:
            node = None if node is None else node.get(key)
        return node

    def number(raw: Any) -> float:
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return 1.0 if raw.lower() == "true" else 0.0
        return float(Decimal(str(raw)))

    out: dict[str, list[float]] = {}
    for resource in config["spec"]["resources"]:
        for metric in resource["metrics"]:
            gauge = metric["each"]["gauge"]
            found = at(obj, gauge["path"])
            items = found if isinstance(found, list) else [found]
            name = f"{resource['metricNamePrefix']}_{metric['name']}"
            out[name] = [number(at(i, gauge["valueFrom"]) if "valueFrom" in gauge else i)
                         for i in items if i is not None]  # fmt: skip
    return out


def test_cluster_wide_operator_under_the_chart_rbac(chart_cp: ControlPlane, tmp_path: Path) -> None:
    """With rbac.embedderSecrets the operator reads the API key its policy's embedder names."""
    values = _install(chart_cp, CLUSTERWIDE, {
        "monitoring": {"kubeStateMetrics": {"enabled": True}},
        "rbac": {"embedderSecrets": True, "tenantSecrets": True},
    })  # fmt: skip
    chart_cp.kubectl("create", "namespace", "apps")
    op = start_operator(chart_cp, CLUSTERWIDE, values, "shoal-5d8f7-x2k9q", tmp_path)
    try:
        with _log_on_failure(op), serve_embeddings(api_key="k-123") as keyed:
            ready = serve_and_retire(Cluster(chart_cp, "apps"), keyed.url, api_key="k-123")
            assert set(keyed.authorizations) == {"Bearer k-123"}
        metrics = op.metrics()
        assert 'shoal_operator_reconciles_total{kind="ModelFleet",result="ok"}' in metrics
    finally:
        code = op.stop()
    assert code == 0, op.output()[-3000:]
    audit(chart_cp, CLUSTERWIDE, values)
    # The kube-state-metrics config reads real numbers off a real Ready fleet.
    cm = next(d for d in render(values, release=CLUSTERWIDE.release, namespace=CLUSTERWIDE.namespace)
              if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-kube-state-metrics"))  # fmt: skip
    series = _ksm_series(yaml.safe_load(cm["data"]["shoal-fleets.yaml"]), ready)
    assert 1.0 in series["shoal_fleet_condition"]  # Ready is True
    assert series["shoal_fleet_budget_max_cost_per_hour"] == [10.0]
    assert series["shoal_fleet_cost_per_hour"] == [float(ready["status"]["costPerHour"])] != [0.0]
    assert len(series["shoal_fleet_model_ready_replicas"]) == 2


@pytest.mark.parametrize(
    ("where", "discovery"), [(NAMESPACED, True), (STRICT, False)], ids=["discovery", "strict"]
)
def test_namespaced_operator_under_the_chart_rbac(
    chart_cp: ControlPlane, tmp_path: Path, embeddings: str, where: Install, discovery: bool
) -> None:
    watched = f"{where.release}-apps"
    chart_cp.kubectl("create", "namespace", watched)
    values = _install(chart_cp, where, {
        "rbac": {"namespaced": True, "clusterDiscovery": discovery, "tenantSecrets": True},
        "operator": {"watchNamespaces": [watched]},
    })  # fmt: skip
    op = start_operator(chart_cp, where, values, f"{where.release}-6c4b9-p7r2m", tmp_path)
    try:
        with _log_on_failure(op):
            serve_and_retire(Cluster(chart_cp, watched), embeddings)
    finally:
        code = op.stop()
    assert code == 0, op.output()[-3000:]
    if discovery:
        audit(chart_cp, where, values)
    else:
        audit(chart_cp, where, values, allowed_forbidden=KOPF_FALLBACKS)
        assert "Not enough permissions to list namespaces" in op.output()


def _wait_log(op: OperatorProcess, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in op.output():
        assert op.proc.poll() is None, f"{op.pod} exited:\n{op.output()[-3000:]}"
        assert time.monotonic() < deadline, (
            f"{op.pod} never logged {text!r}:\n{op.output()[-3000:]}"
        )
        time.sleep(0.3)


def _peers(cp: ControlPlane) -> dict[str, Any]:
    peering = json.loads(cp.kubectl("get", "clusterkopfpeering", "shoal-ha", "-o", "json").stdout)
    return dict(peering.get("status") or {})


def test_replicas_take_turns_through_peering(
    chart_cp: ControlPlane, tmp_path: Path, embeddings: str
) -> None:
    """Two replicas: one reconciles, the other stands by and takes over when it stops."""
    from shoal.operator.__main__ import peering_priority

    values = _install(chart_cp, HA, {"replicaCount": 2, "rbac": {"tenantSecrets": True}})
    pods = sorted(["shoal-ha-7f6d5-abcde", "shoal-ha-7f6d5-vwxyz"],
                  key=lambda p: -peering_priority(None, p))  # fmt: skip
    assert peering_priority(None, pods[0]) != peering_priority(None, pods[1])
    chart_cp.kubectl("create", "namespace", "ha-apps")
    cluster = Cluster(chart_cp, "ha-apps")
    active = start_operator(chart_cp, HA, values, pods[0], tmp_path)
    standby = None
    try:
        _wait_log(active, "Resuming operations after the pause")  # kopf starts paused
        # Pods have a network namespace each; two processes on one host need two sets of ports.
        other = {**values, "operator": {**values["operator"], "metricsPort": free_port(),
                                        "healthPort": free_port()}}  # fmt: skip
        standby = start_operator(chart_cp, HA, other, pods[1], tmp_path)
        wait_for("both replicas in the peering", lambda: set(pods) <= set(_peers(chart_cp)), 60)
        cluster.apply(*_fitted_policy(embeddings), fleet("first"))
        wait_for("the RayService", lambda: cluster.get("rayservice", "first"), 90)
        wait_for("the active replica to handle it", lambda: "fleet_changed" in active.output())
        # The stand-by never resumed: it saw a live peer of higher priority from the start.
        assert "Resuming operations" not in standby.output()
        assert "fleet_changed" not in standby.output()
        assert active.stop() == 0
        _wait_log(standby, "Resuming operations after the pause")
        # The new active replica serves a tenant and a Gateway's route too.
        gateway = {"parentRefs": [{"name": "public"}]}
        cluster.apply(*_tenant("second"),
                      fleet("second", access={"mode": "Tenants"}, serving={"gateway": gateway}))  # fmt: skip
        wait_for("the RayService", lambda: cluster.get("rayservice", "second"), 90)
        wait_for("the tenant to be Ready", lambda: _ready(cluster, "tenant", "team"), 60)
        assert cluster.get("httproute", "second") is not None
        cluster.play_kuberay("second")
        wait_for("the fleet to be Ready", lambda: _ready(cluster, "fleet", "second"), 90)
        for name in ("first", "second"):
            cluster.delete("fleet", name)
        cluster.delete("rpol", "p")
    finally:
        active.stop()
        if standby is not None:
            assert standby.stop() == 0, standby.output()[-3000:]
    assert _peers(chart_cp) == {}, "stopped replicas leave the peering"
    audit(chart_cp, HA, values)
