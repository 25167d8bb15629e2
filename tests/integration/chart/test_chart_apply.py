"""What the chart renders, the real API server accepts: a server-side dry-run apply of every
matrix entry (CRDs installed first, for real), the prometheus-operator objects against their
real CRDs, and a real ``helm install`` / ``helm uninstall`` that keeps the CRDs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.devtools.testing.controlplane import ControlPlane
from tests.integration.chart.conftest import (
    CLUSTERWIDE,
    Install,
    apply_objects,
    helm,
    helm_install,
    install_crds,
    monitoring_crds,
)
from tests.unit.chart.helm import CHART, MATRIX, NAMESPACE, render

pytestmark = [pytest.mark.integration]

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def _namespaces(cp: ControlPlane, docs: list[dict[str, Any]]) -> None:
    wanted = {NAMESPACE, "monitoring"} | {d["metadata"].get("namespace") or NAMESPACE for d in docs}
    existing = set(cp.kubectl("get", "namespaces", "-o", "name").stdout.split())
    for ns in sorted(wanted - {n.removeprefix("namespace/") for n in existing}):
        cp.kubectl("create", "namespace", ns)


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_server_side_dry_run(chart_cp: ControlPlane, name: str) -> None:
    """Every object of the entry passes the API server's validation and admission."""
    docs = render(MATRIX[name])
    _namespaces(chart_cp, docs)
    install_crds(chart_cp, [d for d in docs if d["kind"] == "CustomResourceDefinition"])
    if any(d["kind"] in MONITORING_KINDS for d in docs):
        install_crds(chart_cp, monitoring_crds())
    rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    out = apply_objects(chart_cp, rest, "--dry-run=server")
    assert out.count("serverside-applied (server dry run)") == len(rest), out


def test_monitoring_objects_are_valid_for_prometheus_operator(chart_cp: ControlPlane) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule against prometheus-operator's own CRDs
    (their schemas reject unknown fields and wrong types)."""
    install_crds(chart_cp, monitoring_crds())
    docs = [d for d in render(MATRIX["monitoring"]) if d["kind"] in MONITORING_KINDS]
    assert {d["kind"] for d in docs} == MONITORING_KINDS
    _namespaces(chart_cp, docs)
    # Strict field validation: a misspelt field fails instead of being dropped.
    out = chart_cp.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict",
                           "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs)).stdout  # fmt: skip
    assert out.count("(server dry run)") == 3, out
    bad = json.loads(json.dumps(docs[0]))
    bad["spec"]["endpointz"] = []
    result = chart_cp.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict",
                              "-f", "-", input=json.dumps(bad), check=False)  # fmt: skip
    assert result.returncode != 0 and "endpointz" in result.stderr  # the check can fail


def test_install_prints_notes_and_uninstall_keeps_the_crds(chart_cp: ControlPlane) -> None:
    where = Install("keep", "keep-system")
    out = helm_install(chart_cp, where, {"crds": {"install": True, "keep": True}})
    assert "STATUS: deployed" in out
    assert "kubectl apply -f examples/quickstart.yaml" in out  # NOTES.txt: what to do next
    assert "kubectl -n keep-system rollout status deployment/keep-shoal" in out
    # A fleet exists while the release is uninstalled ...
    ns = "keep-fleets"
    chart_cp.kubectl("create", "namespace", ns)
    policy = {"apiVersion": "shoal.dev/v1alpha1", "kind": "RoutingPolicy",
              "metadata": {"name": "p", "namespace": ns},
              "spec": {"strategy": "static", "staticOrder": ["a"]}}  # fmt: skip
    apply_objects(chart_cp, [policy])
    helm(chart_cp, "uninstall", where.release, "--namespace", where.namespace)
    # ... and survives it: the CRDs carry helm.sh/resource-policy: keep.
    for crd in ("modelfleets.shoal.dev", "routingpolicies.shoal.dev"):
        chart_cp.kubectl("get", "crd", crd)
    assert chart_cp.kubectl("get", "routingpolicy", "p", "-n", ns, "-o", "name").stdout.strip()
    assert chart_cp.kubectl("get", "deployment", "-n", where.namespace, "-o", "name").stdout == ""


def test_install_and_upgrade_run_the_peering_hook(chart_cp: ControlPlane) -> None:
    where = Install("peers", "peers-system")
    helm_install(chart_cp, where, {"crds": {"install": False}, "replicaCount": 2})
    peering = json.loads(
        chart_cp.kubectl("get", "clusterkopfpeering", "peers-shoal", "-o", "json").stdout
    )
    assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == "peers"
    helm(chart_cp, "upgrade", where.release, str(CHART), "--namespace", where.namespace,
         values={"crds": {"install": False}, "replicaCount": 3})  # fmt: skip
    chart_cp.kubectl("get", "clusterkopfpeering", "peers-shoal")
    deployment = json.loads(chart_cp.kubectl("get", "deployment", "peers-shoal", "-n", where.namespace,
                                             "-o", "json").stdout)  # fmt: skip
    assert deployment["spec"]["replicas"] == 3
    helm(chart_cp, "uninstall", where.release, "--namespace", where.namespace)
    assert CLUSTERWIDE.release != where.release
