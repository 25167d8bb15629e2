"""The local real node (``make cluster-up``) for the end-to-end tests in ``tests/e2e``.

:func:`attach_or_start` reuses a cluster a person started (its state folder, or a
``KUBECONFIG`` whose server is the node's) or runs ``hack/cluster-up.sh``; the session
fixture stops only what it started (``hack/cluster-down.sh``). :class:`NodeCluster` wraps
kubectl with the cluster's admin kubeconfig, waits on conditions, reads the HTTP endpoint of a
Service from this machine (its ClusterIP, through kube-proxy) and gathers the operator's and
the Ray pods' logs for a failed test's report.

Used by ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shoal.devtools.testing import REPO_ROOT, require

STATE_DIR = Path(os.environ.get("SHOAL_NODE_DIR", "/var/lib/shoal-node"))
TOOLS_BIN = Path(os.environ.get("SHOAL_TOOLS_DIR", REPO_ROOT / ".tools")) / "bin"
#: What the node needs from this machine (hack/setup.sh installs and builds them).
NODE_COMMANDS = ("containerd", "runc", "ctr", "iptables", "conntrack", "buildah", "gcc")
NODE_BINARIES = ("etcd", "kube-apiserver", "kubectl", "helm", "kubelet", "kube-proxy", "coredns")
SHOAL_NAMESPACE = "shoal-system"
KUBERAY_NAMESPACE = "kuberay-system"

T = TypeVar("T")


class NodeError(RuntimeError):
    """The node could not be started, or a command against it failed."""


def missing_pieces() -> list[str]:
    """What this machine lacks to start the node (empty: it can)."""
    missing = [c for c in NODE_COMMANDS if shutil.which(c) is None]
    missing += [b for b in NODE_BINARIES if not (TOOLS_BIN / b).is_file()]
    if not Path("/usr/lib/cni/bridge").is_file():
        missing.append("CNI plugins (/usr/lib/cni)")
    if os.geteuid() != 0:
        missing.append("root")
    return missing


@dataclass
class NodeCluster:
    """A running cluster-up cluster."""

    kubeconfig: Path
    #: Whether this process started it (and so stops it).
    started_here: bool = False
    #: Seconds cluster-up took, when this process ran it.
    up_seconds: float | None = None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(TOOLS_BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise NodeError(f"kubectl {' '.join(args)} exited {out.returncode}: {out.stderr}")
        return out

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as JSON, or None when it does not exist."""
        ns = ["-n", namespace] if namespace else []
        out = self.kubectl("get", kind, name, *ns, "-o", "json", check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr:
                return None
            raise NodeError(out.stderr)
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def items(self, kind: str, namespace: str | None, *selector: str) -> list[dict[str, Any]]:
        ns = ["-n", namespace] if namespace else ["--all-namespaces"]
        out = self.kubectl("get", kind, *ns, *selector, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def service_url(self, name: str, namespace: str, port_name: str | None = None) -> str:
        """``http://<ClusterIP>:<port>`` of a Service: reached from this machine through
        kube-proxy's rules, as a pod reaches it."""
        svc = self.get("service", name, namespace)
        if svc is None:
            raise NodeError(f"no Service {namespace}/{name}")
        ports = svc["spec"]["ports"]
        port = next((p for p in ports if port_name in (None, p.get("name"))), ports[0])
        return f"http://{svc['spec']['clusterIP']}:{port['port']}"

    def pod_logs(self, namespace: str, selector: str, tail: int = 200) -> str:
        """The last lines of every container of the matching pods (previous runs included)."""
        chunks = []
        for pod in self.items("pods", namespace, "-l", selector):
            name = pod["metadata"]["name"]
            for c in pod["spec"]["containers"]:
                for previous in (False, True):
                    args = ["logs", "-n", namespace, name, "-c", c["name"], f"--tail={tail}"]
                    out = self.kubectl(*args, *(["--previous"] if previous else []), check=False)
                    if out.returncode == 0 and out.stdout.strip():
                        label = " (previous)" if previous else ""
                        chunks.append(f"--- {namespace}/{name} [{c['name']}]{label}\n{out.stdout}")
        return "\n".join(chunks)

    def diagnostics(self, fleet_namespace: str | None = None) -> str:
        """What a failed test's report carries: pods, events, the operators' and Ray's logs."""
        parts = [self.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout]
        parts.append(self.pod_logs(SHOAL_NAMESPACE, "app.kubernetes.io/name=shoal"))
        parts.append(self.pod_logs(KUBERAY_NAMESPACE, "app.kubernetes.io/name=kuberay-operator"))
        if fleet_namespace:
            events = ["get", "events", "-n", fleet_namespace, "--sort-by=.lastTimestamp"]
            parts.append(self.kubectl(*events, check=False).stdout)
            kinds = "modelfleets,rayservices,rayclusters"
            get = ["get", kinds, "-n", fleet_namespace, "-o", "wide"]
            parts.append(self.kubectl(*get, check=False).stdout)
            parts.append(self.pod_logs(fleet_namespace, "ray.io/is-ray-node=yes", tail=120))
        return "\n".join(p for p in parts if p)


def wait_until(what: str, check: Callable[[], T | None], timeout: float, every: float = 1) -> T:
    """Call ``check`` until it returns something other than None or False; raise after
    ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except Exception as exc:  # a transient API or connection error: try again
            last_error = exc
        time.sleep(every)
    raise TimeoutError(f"{what} not within {timeout:.0f} s (last error: {last_error})")


def _state_kubeconfig() -> Path | None:
    admin = STATE_DIR / "admin.kubeconfig"
    return admin if admin.is_file() else None


def _answers(kubeconfig: Path) -> bool:
    cmd = [str(TOOLS_BIN / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _shoal_installed(cluster: NodeCluster) -> bool:
    deploy = cluster.get("deployment", "shoal", SHOAL_NAMESPACE)
    return bool(deploy and deploy.get("status", {}).get("availableReplicas"))


def attach_or_start(log: Path, up_args: Sequence[str] = ()) -> NodeCluster:
    """The running cluster-up cluster with Shoal installed, or a new one (skips, or fails
    where servers are required, when this machine cannot run it)."""
    existing = _state_kubeconfig()
    if existing is not None and _answers(existing):
        cluster = NodeCluster(existing)
        if _shoal_installed(cluster):
            return cluster
    missing = missing_pieces()
    require(not missing, f"the local node cannot start here: missing {', '.join(missing)}")
    require(
        (REPO_ROOT / "hack" / "build-images.sh").is_file(),
        "hack/build-images.sh is missing: no images to run",
    )
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [str(REPO_ROOT / "hack" / "cluster-up.sh"), *up_args],
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            timeout=3600,
        )
    if proc.returncode != 0:
        tail = log.read_text()[-6000:]
        # What it started (etcd, the API server, containerd, the kubelet) would otherwise run
        # on, holding memory and CPU for the rest of the session and its ports for the next try.
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            tear_down(log)
        raise NodeError(f"hack/cluster-up.sh exited {proc.returncode}:\n{tail}")
    last = proc.stdout.strip().splitlines()[-1]
    if not last.startswith("export KUBECONFIG="):
        raise NodeError(f"cluster-up's last line is not an export of KUBECONFIG: {last!r}")
    path = Path(last.removeprefix("export KUBECONFIG="))
    return NodeCluster(path, started_here=True, up_seconds=time.monotonic() - started)


def tear_down(log: Path) -> None:
    """Run ``hack/cluster-down.sh``."""
    with log.open("a") as out:
        subprocess.run(
            [str(REPO_ROOT / "hack" / "cluster-down.sh")],
            stdout=out,
            stderr=out,
            timeout=600,
            check=True,
        )
