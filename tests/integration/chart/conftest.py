"""A control plane of the chart tests' own: ServiceAccount identities and an audit log.

The chart's RBAC is tested by running the operator *as* the chart's ServiceAccount. This
control plane issues no ServiceAccount tokens (no controllers run), so it starts with static
token rows for the identities the tests install the chart as, and it audits every request
those identities make: a request the API server forbids, or a permission the operator never
uses, shows up there.

The chart's own CRDs (rendered from the chart), KubeRay's RayService CRD and, where
``hack/build-control-plane.sh`` fetched them, the prometheus-operator CRDs are installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.devtools.testing import REPO_ROOT, require
from shoal.devtools.testing.controlplane import (
    KUBERAY_CRDS,
    ControlPlane,
    free_port,
    missing_binaries,
    start_control_plane,
)
from tests.unit.chart.helm import CHART, helm_binary, render, render_text

MONITORING_CRDS = KUBERAY_CRDS / "monitoring"


@dataclass(frozen=True)
class Install:
    """Where a test installs the chart: release name, namespace, and the ServiceAccount."""

    release: str
    namespace: str

    @property
    def service_account(self) -> str:
        return self.release if "shoal" in self.release else f"{self.release}-shoal"

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def groups(self) -> list[str]:
        return ["system:serviceaccounts", f"system:serviceaccounts:{self.namespace}"]


CLUSTERWIDE = Install("shoal", "shoal-system")
NAMESPACED = Install("shoal-ns", "shoal-ns-system")
STRICT = Install("shoal-strict", "shoal-strict-system")
HA = Install("shoal-ha", "shoal-ha-system")
INSTALLS = (CLUSTERWIDE, NAMESPACED, STRICT, HA)


def apply_objects(cp: ControlPlane, objs: list[dict[str, Any]], *args: str) -> str:
    """Server-side apply ``objs`` (extra kubectl ``args``, e.g. a dry run); kubectl's output."""
    text = "\n---\n".join(yaml.safe_dump(o) for o in objs)
    return cp.kubectl("apply", "--server-side", "--force-conflicts", *args, "-f", "-",
                      input=text).stdout  # fmt: skip


def install_crds(cp: ControlPlane, crds: list[dict[str, Any]]) -> None:
    """Apply CRDs for real and wait until the API server serves them."""
    if not crds:
        return
    apply_objects(cp, crds)
    # Polled rather than `kubectl wait`, which fails on a CRD whose status is not written yet.
    path = '{.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + 60
    for c in crds:
        name = c["metadata"]["name"]
        while (
            cp.kubectl("get", "crd", name, "-o", f"jsonpath={path}", check=False).stdout != "True"
        ):
            assert time.monotonic() < deadline, f"CRD {name} not established after 60s"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def chart_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with the chart's CRDs and the test identities, audited."""
    missing = missing_binaries()
    require(not missing, f"control plane not built ({', '.join(missing)}): run hack/setup.sh")
    helm_binary()
    cp = start_control_plane(
        tmp_path_factory.mktemp("chart-control-plane"),
        users={i.user: i.groups for i in INSTALLS},
        audit=True,
    )
    try:
        crds = [yaml.safe_load(p.read_text()) for p in sorted(KUBERAY_CRDS.glob("*.yaml"))]
        crds += [d for d in render() if d["kind"] == "CustomResourceDefinition"]
        install_crds(cp, crds)
        cp.install_gateway_api_crds()  # fleets with a gateway get an HTTPRoute
        yield cp
    finally:
        cp.stop()


def monitoring_crds() -> list[dict[str, Any]]:
    """The prometheus-operator CRDs, or a visible skip when they were not fetched."""
    files = sorted(MONITORING_CRDS.glob("monitoring.coreos.com_*.yaml"))
    require(
        len(files) == 3,
        "prometheus-operator CRDs not fetched (run hack/build-control-plane.sh): "
        "ServiceMonitor, PodMonitor and PrometheusRule not validated by the API server",
    )
    return [yaml.safe_load(p.read_text()) for p in files]


def helm(cp: ControlPlane, *args: str, values: dict[str, Any] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run helm against the test control plane (as its admin)."""
    extra: list[str] = []
    if values is not None:
        path = cp.workdir / f"values-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(values))
        extra = ["-f", str(path)]
    result = subprocess.run(
        [helm_binary(), "--kubeconfig", str(cp.kubeconfig), *args, *extra],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


def helm_install(cp: ControlPlane, where: Install, values: dict[str, Any]) -> str:
    """``helm install`` the chart (taking over the CRDs the fixture applied); its output."""
    return helm(cp, "install", where.release, str(CHART), "--namespace", where.namespace,
                "--create-namespace", "--take-ownership", values=values).stdout  # fmt: skip


# --- the operator, as the chart runs it ---------------------------------------------------------


@dataclass
class OperatorProcess:
    """``python -m shoal.operator`` with the rendered Deployment's args and env."""

    proc: subprocess.Popen[bytes]
    log: Path
    health_port: int
    metrics_port: int
    pod: str
    args: list[str] = field(default_factory=list)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return int(self.proc.returncode)


def operator_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with free loopback ports and quick re-checks for the test."""
    out: dict[str, Any] = json.loads(json.dumps(values))
    op = out.setdefault("operator", {})
    op.setdefault("metricsPort", free_port())
    op.setdefault("healthPort", free_port())
    op.setdefault("resyncSeconds", 5)
    op.setdefault("retrySeconds", 2)
    return out


def start_operator(
    cp: ControlPlane, where: Install, values: dict[str, Any], pod: str, workdir: Path
) -> OperatorProcess:
    """Start the operator as the chart's Deployment would, authenticated as its ServiceAccount."""
    docs = [d for d in yaml.safe_load_all(render_text(values, release=where.release,
                                                      namespace=where.namespace)) if d]  # fmt: skip
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "KUBE"))}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}:
            env[e["name"]] = pod
        elif e["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}:
            env[e["name"]] = where.namespace
        else:
            raise AssertionError(f"the test does not know how to fill {e}")
    home = workdir / f"home-{pod}"
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(home), KUBECONFIG=str(cp.kubeconfig_for(where.user)))
    log = workdir / f"{pod}.log"
    python = REPO_ROOT / ".venv" / "bin" / "python"
    argv = [str(python if python.exists() else "python3"), "-m", "shoal.operator", *c["args"]]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    op = OperatorProcess(proc, log, ports["health"], ports["metrics"], pod, c["args"])
    deadline = time.monotonic() + 90
    while not op.healthy():
        if proc.poll() is not None or time.monotonic() > deadline:
            op.stop()
            pytest.fail(
                f"operator {pod} not healthy on its liveness endpoint:\n{op.output()[-3000:]}"
            )
        time.sleep(0.5)
    return op


# --- what the audit log says ---------------------------------------------------------------------


Access = tuple[str, str, str]  # (verb, API group, resource[/subresource])


def accesses(events: list[dict[str, Any]], *, code: int | None = None) -> set[Access]:
    """Resource requests in audit ``events`` (only those answered ``code``, if given)."""
    out = set()
    for e in events:
        ref = e.get("objectRef")
        if not ref or not ref.get("resource"):
            continue  # discovery (/api, /apis), which every authenticated user may read
        status = (e.get("responseStatus") or {}).get("code")
        if code is not None and status != code:
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((e["verb"], ref.get("apiGroup", ""), resource))
        if e["verb"] == "patch" and status == 201:
            # A server-side apply that created the object: authorised as patch *and* create.
            out.add(("create", ref.get("apiGroup", ""), resource))
    return out


def granted(docs: list[dict[str, Any]]) -> set[Access]:
    """Every (verb, group, resource) the rendered Roles and ClusterRoles grant the operator."""
    out = set()
    for d in docs:
        if d["kind"] not in ("Role", "ClusterRole") or d["metadata"]["name"].endswith(
            "-kube-state-metrics"
        ):
            continue
        for rule in d["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out |= {(verb, group, resource) for verb in rule["verbs"]}
    return out
