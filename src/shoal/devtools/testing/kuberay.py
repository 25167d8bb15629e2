"""KubeRay's own controller against a test control plane, with what it needs to act.

:func:`start_kuberay_stack` runs, beside an etcd + kube-apiserver pair started by
:mod:`shoal.devtools.testing.controlplane`, the real binaries that ``hack/build-control-plane.sh``
builds:

- KubeRay's operator (``ray-operator``), authenticated as its ServiceAccount would be
  (``system:serviceaccount:ray-system:kuberay-operator``, a static token) and authorised by
  KubeRay's own ClusterRole, with leader election off;
- ``kube-controller-manager`` with the garbage collector, the Endpoints/EndpointSlice, node
  lifecycle and volume binder controllers (what deletes a RayService's RayCluster and Pods,
  lists the head Service's endpoints, makes KWOK's nodes schedulable, binds claims);
- ``kube-scheduler``, which binds KubeRay's Pods to the test's nodes;
- KWOK, which plays the kubelets: the Node objects it manages report Ready, and Pods bound to
  them get a Running status and a pod IP, as a kubelet would write them; containers with a
  readiness probe (KubeRay's Ray containers) stay unready, since nothing answers the probe.

There is no container runtime: no Ray process runs in those Pods. So KubeRay walks its state
machine up to waiting for the head Pod to become ready ("The head Pod is not ready"), writing
the RayService status all the way; docs/operator.md says which steps are real.

Tests need the extra users of :func:`stack_users` in ``start_control_plane(users=...)``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shoal.devtools.testing.controlplane import (
    BIN_DIR,
    TOOLS_DIR,
    ControlPlane,
    ControlPlaneError,
    ServerProcess,
    free_port,
)

#: The binaries this module starts, beside the control plane's.
STACK_BINARIES = ("ray-operator", "kwok", "kube-controller-manager", "kube-scheduler")
#: KubeRay's ClusterRole, fetched by the build script from the KubeRay module.
KUBERAY_ROLE = TOOLS_DIR / "kuberay" / "role.yaml"
KUBERAY_NAMESPACE, KUBERAY_SERVICE_ACCOUNT = "ray-system", "kuberay-operator"
#: The identity KubeRay's operator runs as: what its ServiceAccount's token would say.
KUBERAY_USER = f"system:serviceaccount:{KUBERAY_NAMESPACE}:{KUBERAY_SERVICE_ACCOUNT}"
#: kube-scheduler's own identity; Kubernetes' bootstrap RBAC grants it what it needs.
SCHEDULER_USER = "system:kube-scheduler"
#: kube-controller-manager without ServiceAccount credentials per controller (this control
#: plane issues no ServiceAccount tokens) needs every controller's rights at once: cluster
#: admin, as a user of its own so that the audit log tells it apart.
CONTROLLER_MANAGER_USER = "shoal-test:kube-controller-manager"
#: KWOK writes status for every Node and Pod it manages: cluster admin, likewise.
KWOK_USER = "shoal-test:kwok"
#: Annotation that puts a Node under KWOK's management.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: kube-controller-manager controllers the tests need (nothing that needs cloud or kubelets):
#: the node lifecycle controller lifts the not-ready taint the API server puts on new Nodes
#: once KWOK reports them Ready; the binder binds PersistentVolumeClaims to volumes.
CONTROLLERS = (
    "garbage-collector-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "node-lifecycle-controller",
    "persistentvolume-binder-controller",
)


#: Status KWOK writes for a Pod bound to one of its nodes: Running with a pod IP. Containers
#: with a readiness probe stay unready, as a kubelet would leave them with nothing answering
#: the probe (KubeRay probes the Ray head's dashboard and raylet; no Ray runs here).
_POD_STATUS = """
{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "READY", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "READY", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: BOOL
  started: true
  restartCount: 0
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


def _pod_stage(name: str, probed: bool) -> dict[str, Any]:
    ready = "False" if probed else "True"
    template = _POD_STATUS.replace("READY", ready).replace("BOOL", ready.lower())
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.podIP", "operator": "DoesNotExist"},
                    {
                        "key": ".spec.containers[0].readinessProbe",
                        "operator": "Exists" if probed else "DoesNotExist",
                    },
                ]
            },
            "next": {"statusTemplate": template},
        },
    }


#: KWOK's pod stages: start Pods (probed ones unready), and let deleted Pods go.
KWOK_POD_STAGES = (
    _pod_stage("pod-running", probed=False),
    _pod_stage("pod-running-probe-unanswered", probed=True),
    {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "pod-delete"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}]
            },
            "next": {"finalizers": {"empty": True}, "delete": True},
        },
    },
)


def stack_users() -> dict[str, list[str]]:
    """Extra static-token users for ``start_control_plane(users=...)``."""
    return {
        KUBERAY_USER: ["system:serviceaccounts", f"system:serviceaccounts:{KUBERAY_NAMESPACE}"],
        SCHEDULER_USER: [],
        CONTROLLER_MANAGER_USER: ["system:masters"],
        KWOK_USER: ["system:masters"],
    }


def missing_stack_binaries() -> list[str]:
    """Binaries of the stack (and KubeRay's ClusterRole) not built or fetched yet."""
    missing = [b for b in STACK_BINARIES if not (BIN_DIR / b).is_file()]
    return missing + ([] if KUBERAY_ROLE.is_file() else [str(KUBERAY_ROLE)])


@dataclass(frozen=True)
class FakeNode:
    """A Node object KWOK keeps Ready: its name and what it offers the scheduler."""

    name: str
    cpu: str = "64"
    memory: str = "256Gi"
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        """The Node object, as KWOK's documentation writes one."""
        capacity: dict[str, str] = {"cpu": self.cpu, "memory": self.memory, "pods": "110"}
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        key, value = KWOK_NODE_ANNOTATION
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {key: value},
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **self.labels,
                },
            },
            "spec": {},
            "status": {"capacity": capacity, "allocatable": capacity},
        }


@dataclass
class KubeRayStack:
    """The running processes of :func:`start_kuberay_stack`."""

    cp: ControlPlane
    kuberay: ServerProcess
    others: list[ServerProcess]
    #: Port of KubeRay's Prometheus metrics (controller-runtime's own among them).
    metrics_port: int

    def reconciles(self, controller: str = "rayservice") -> int:
        """How many reconciles KubeRay's ``controller`` has finished so far (its own metric
        ``controller_runtime_reconcile_total``, all results)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("controller_runtime_reconcile_total{") and (
                f'controller="{controller}"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def stop(self) -> None:
        """Stop every process of the stack (the control plane keeps running)."""
        for proc in (self.kuberay, *self.others):
            proc.stop()

    def kuberay_log(self, lines: int = 400) -> str:
        """The tail of KubeRay's operator log."""
        return self.kuberay.tail(lines)

    def logs(self) -> str:
        """The tails of every log, for a failing test's message."""
        return "\n".join(f"--- {p.name}\n{p.tail(20)}" for p in (self.kuberay, *self.others))

    def check_running(self) -> None:
        """Raise when a process of the stack has exited."""
        for proc in (self.kuberay, *self.others):
            if not proc.running():
                raise ControlPlaneError(f"{proc.name} exited:\n{proc.tail()}")


def _install_kuberay_rbac(cp: ControlPlane) -> None:
    role = yaml.safe_load(KUBERAY_ROLE.read_text())
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "kuberay-operator"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": KUBERAY_SERVICE_ACCOUNT,
                "namespace": KUBERAY_NAMESPACE,
            }
        ],
    }
    docs = [role, binding]
    cp.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(map(json.dumps, docs)))


def create_nodes(cp: ControlPlane, nodes: Sequence[FakeNode]) -> None:
    """Create the Node objects (their status written once; KWOK keeps it up)."""
    for node in nodes:
        manifest = node.manifest()
        cp.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(manifest))
        cp.kubectl(
            "patch",
            "node",
            node.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": manifest["status"]}),
        )


def _wait(what: str, check: Any, stack: KubeRayStack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_running()
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.3)
    raise ControlPlaneError(f"{what} not ready after {timeout}s:\n{stack.logs()}")


def _nodes_ready(cp: ControlPlane, nodes: Sequence[FakeNode]) -> bool:
    """Ready (KWOK) and schedulable (the node lifecycle controller lifted the taint)."""
    items = json.loads(cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = {
        n["metadata"]["name"]
        for n in items
        for c in (n.get("status") or {}).get("conditions") or []
        if c["type"] == "Ready" and c["status"] == "True" and not n["spec"].get("taints")
    }
    return {n.name for n in nodes} <= ready


def _healthz(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
        return bool(resp.status == 200)


def start_kuberay_stack(
    cp: ControlPlane, workdir: Path, nodes: Sequence[FakeNode], *, timeout: float = 120
) -> KubeRayStack:
    """Start the controller manager, the scheduler, KWOK and KubeRay's operator against
    ``cp`` (started with :func:`stack_users`), create ``nodes``, and wait until the nodes
    are Ready and KubeRay's operator answers its health probe."""
    missing = missing_stack_binaries()
    if missing:
        raise ControlPlaneError(
            f"missing {', '.join(missing)} in {TOOLS_DIR}: run hack/build-control-plane.sh"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = {user: str(cp.kubeconfig_for(user)) for user in stack_users()}
    _install_kuberay_rbac(cp)

    def secure(port: int) -> list[str]:
        return ["--bind-address=127.0.0.1", f"--secure-port={port}", f"--cert-dir={workdir}"]

    kcm = ServerProcess(
        "kube-controller-manager",
        [
            str(BIN_DIR / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig[CONTROLLER_MANAGER_USER]}",
            "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}",
            "--use-service-account-credentials=false",
            *secure(free_port()),
            "--v=1",
        ],
        workdir / "kube-controller-manager.log",
    )
    scheduler = ServerProcess(
        "kube-scheduler",
        [
            str(BIN_DIR / "kube-scheduler"),
            f"--kubeconfig={kubeconfig[SCHEDULER_USER]}",
            "--leader-elect=false",
            *secure(free_port()),
            "--v=1",
        ],
        workdir / "kube-scheduler.log",
    )
    key, value = KWOK_NODE_ANNOTATION
    stages = workdir / "kwok-stages.yaml"
    stages.write_text(yaml.safe_dump_all(KWOK_POD_STAGES))
    kwok = ServerProcess(
        "kwok",
        [
            str(BIN_DIR / "kwok"),
            f"--config={stages}",
            f"--kubeconfig={kubeconfig[KWOK_USER]}",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            "--cidr=10.244.0.1/16",
            "--node-ip=10.240.0.1",
        ],
        workdir / "kwok.log",
    )
    probe, metrics = free_port(), free_port()
    kuberay = ServerProcess(
        "ray-operator",
        [
            str(BIN_DIR / "ray-operator"),
            f"--kubeconfig={kubeconfig[KUBERAY_USER]}",
            "--enable-leader-election=false",
            f"--metrics-addr=127.0.0.1:{metrics}",
            f"--health-probe-bind-address=127.0.0.1:{probe}",
            "--log-stdout-encoder=console",
        ],
        workdir / "ray-operator.log",
    )
    stack = KubeRayStack(cp, kuberay, [kcm, scheduler, kwok], metrics)
    try:
        for proc in (kcm, scheduler, kwok, kuberay):
            proc.start()
        create_nodes(cp, nodes)
        _wait("KWOK's nodes", lambda: _nodes_ready(cp, nodes), stack, timeout)
        _wait("KubeRay's operator", lambda: _healthz(probe), stack, timeout)
    except BaseException:
        stack.stop()
        raise
    return stack
