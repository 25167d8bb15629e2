"""A real Kubernetes control plane on loopback: etcd plus kube-apiserver, no kubelets.

Starts the binaries that ``hack/build-control-plane.sh`` builds into ``.tools/bin`` the way
controller-runtime's envtest does: random free ports, a throwaway data and cert folder, a
static token for an admin user, and a kubeconfig file. No controllers run here: no garbage
collection, no pods. :mod:`shoal.devtools.testing.kuberay` adds them (KubeRay's operator,
kube-controller-manager, kube-scheduler, KWOK) for the tests that need them.

Used by the pytest fixtures in ``tests/conftest.py`` and by the operator benchmark.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shoal.devtools.testing import REPO_ROOT, require
from shoal.local import ports

TOOLS_DIR = Path(os.environ.get("SHOAL_TOOLS_DIR", REPO_ROOT / ".tools"))
BIN_DIR = TOOLS_DIR / "bin"
KUBERAY_CRDS = TOOLS_DIR / "crds"
SHOAL_CRDS = REPO_ROOT / "crds"
#: The Gateway API's standard CRDs (hack/fetch-gateway-api-crds.sh), installed on request.
GATEWAY_API_CRDS = KUBERAY_CRDS / "gateway-api"
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kubectl")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or did not become ready."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; the message carries what it printed."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd[3:]))} exited {self.returncode}: {self.stderr}"


def gateway_api_crd_files() -> list[Path]:
    """The fetched Gateway API CRD files (empty: not fetched)."""
    return sorted(GATEWAY_API_CRDS.glob("gateway.networking.k8s.io_*.yaml"))


def missing_binaries() -> list[str]:
    """Binaries the control plane needs that are not built yet."""
    return [b for b in REQUIRED_BINARIES if not (BIN_DIR / b).is_file()]


#: Where :func:`free_port` draws from (:mod:`shoal.local.ports`: outside the ranges other
#: processes are given ports from, so nothing else is handed the port before the server binds).
PORT_RANGE = ports.PORT_RANGE


def free_port() -> int:
    """A TCP port nothing listens on now, outside the ranges other processes are given ports
    from (:data:`PORT_RANGE`), and not handed out before by this process."""
    return ports.free_port()


@dataclass
class ServerProcess:
    """One server binary run in its own process group, its output in a log file."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if not self.running():
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver pair and how to talk to it."""

    workdir: Path
    server: str
    token: str
    ca_file: Path
    kubeconfig: Path
    _etcd: ServerProcess
    _apiserver: ServerProcess
    env: dict[str, str] = field(default_factory=dict)
    #: Bearer tokens of the extra users ``start_control_plane(users=...)`` created, by user name.
    tokens: dict[str, str] = field(default_factory=dict)
    #: The audit log (JSON lines) when started with ``audit=True``.
    audit_log: Path | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only (etcd keeps the data): an API outage."""
        self._apiserver.stop()

    def start_apiserver(self, timeout: float = 90) -> None:
        """Start kube-apiserver again on the same port and wait until it is ready."""
        self._apiserver.start()
        self.wait_ready(timeout)

    def restart_etcd(self, while_down: Callable[[], None] | None = None) -> None:
        """Kill etcd (SIGKILL: no clean shutdown) and start it again on the same port and
        data, with kube-apiserver running through it, as when etcd's node restarts.
        ``while_down`` runs while etcd is down (a test checks the outage is real there)."""
        proc = self._etcd.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
        if while_down is not None:
            while_down()
        self._etcd.start()
        self.wait_ready()

    def stop(self) -> None:
        """Stop everything."""
        self._apiserver.stop()
        self._etcd.stop()

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait for ``/readyz`` to answer ok."""
        deadline = time.monotonic() + timeout
        ctx = (
            ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file.exists() else None
        )
        last = ""
        while time.monotonic() < deadline:
            if not self._apiserver.running():
                raise ControlPlaneError(f"kube-apiserver exited:\n{self._apiserver.tail()}")
            if ctx is None and self.ca_file.exists():
                ctx = ssl.create_default_context(cafile=str(self.ca_file))
            try:
                req = urllib.request.Request(
                    f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
                )
                with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except Exception as exc:  # not up yet
                last = str(exc)
            time.sleep(0.3)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {timeout}s ({last}):\n{self._apiserver.tail()}"
        )

    # --- clients -------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built ``kubectl`` against this control plane."""
        result = subprocess.run(
            [str(BIN_DIR / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def apply_files(self, paths: Sequence[Path]) -> None:
        """Server-side apply manifest files (big CRDs do not fit client-side apply)."""
        args: list[str] = []
        for p in paths:
            args += ["-f", str(p)]
        self.kubectl("apply", "--server-side", "--force-conflicts", *args)

    def wait_established(self, names: Sequence[str], timeout: float = 60.0) -> None:
        """Wait until every CRD of ``names`` is Established. Polled by jsonpath rather than
        ``kubectl wait --for=condition``: right after the apply a CRD may have no
        status.conditions yet, and kubectl 1.34's wait then fails at once ("accessor error:
        <nil>") instead of waiting."""
        query = '{.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while waiting:
            waiting = [
                n
                for n in waiting
                if self.kubectl(
                    "get", f"crd/{n}", "-o", f"jsonpath={query}", check=False
                ).stdout.strip()
                != "True"
            ]
            if waiting and time.monotonic() > deadline:
                raise ControlPlaneError(f"CRDs not established after {timeout:.0f}s: {waiting}")
            if waiting:
                time.sleep(0.2)

    def install_crds(self) -> None:
        """Install Shoal's CRDs and KubeRay's (RayCluster, RayJob, RayService), and wait until
        established."""
        files = sorted(SHOAL_CRDS.glob("*.yaml")) + sorted(KUBERAY_CRDS.glob("*.yaml"))
        self.apply_files(files)
        names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
        self.wait_established(names)

    def install_gateway_api_crds(self) -> None:
        """Install the Gateway API's standard CRDs (HTTPRoute, Gateway, ...) and wait until
        established; a visible skip (a failure where servers are required) when they were not
        fetched."""
        files = gateway_api_crd_files()
        require(
            bool(files),
            "Gateway API CRDs not fetched (run hack/build-control-plane.sh, which calls "
            "hack/fetch-gateway-api-crds.sh)",
        )
        self.apply_files(files)
        names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
        self.wait_established(names)

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig that authenticates as ``user`` (one of the extra users), not as admin."""
        path = self.workdir / f"kubeconfig-{user.replace(':', '_')}"
        if not path.exists():
            _write_kubeconfig(path, self.server, self.ca_file, self.tokens[user], user=user)
        return path

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """Audit events so far (requests of service accounts only), optionally of one user."""
        if self.audit_log is None:
            raise ControlPlaneError("started without audit=True")
        if not self.audit_log.exists():
            return []
        events = [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]
        return [e for e in events if user is None or e["user"]["username"] == user]

    def api_client(self, user: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for this control plane, as admin or as ``user``."""
        from kubernetes import config

        path = self.kubeconfig_for(user) if user else self.kubeconfig
        return config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]


def _write_kubeconfig(path: Path, server: str, ca: Path, token: str, user: str = "admin") -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "shoal-test",
                        "cluster": {"server": server, "certificate-authority": str(ca)},
                    }
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "shoal-test",
                        "context": {"cluster": "shoal-test", "user": user, "namespace": "default"},
                    }
                ],
                "current-context": "shoal-test",
            }
        )
    )


#: Audit policy of ``audit=True``: metadata of every request made by a service account (the
#: identities RBAC tests run as), nothing of the admin's.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def start_control_plane(
    workdir: Path,
    *,
    timeout: float = 120,
    users: Mapping[str, Sequence[str]] | None = None,
    audit: bool = False,
) -> ControlPlane:
    """Start etcd and kube-apiserver under ``workdir`` and wait until the API is ready.

    ``users`` adds static-token users (name -> groups) beside the admin, e.g. a ServiceAccount
    identity ``system:serviceaccount:NS:NAME`` with groups ``system:serviceaccounts`` and
    ``system:serviceaccounts:NS`` (this control plane issues no ServiceAccount tokens: no
    controllers run). ``audit`` logs the metadata of service accounts' requests to
    :attr:`ControlPlane.audit_log`.
    """
    missing = missing_binaries()
    if missing:
        raise ControlPlaneError(
            f"missing {', '.join(missing)} in {BIN_DIR}: run hack/build-control-plane.sh"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    certs = workdir / "certs"
    certs.mkdir(exist_ok=True)
    sa_key = certs / "sa.key"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
    )
    token = secrets.token_hex(16)
    tokens = workdir / "tokens.csv"
    rows = [f'{token},admin,admin-uid,"system:masters"']
    user_tokens = {}
    for i, (user, groups) in enumerate((users or {}).items()):
        user_tokens[user] = secrets.token_hex(16)
        rows.append(f'{user_tokens[user]},{user},user-{i},"{",".join(groups)}"')
    tokens.write_text("\n".join(rows) + "\n")
    audit_args: list[str] = []
    audit_log = None
    if audit:
        policy = workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        audit_log = workdir / "audit.log"
        audit_args = [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-mode=blocking",
        ]

    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    etcd = ServerProcess(
        "etcd",
        [
            str(BIN_DIR / "etcd"),
            "--data-dir",
            str(workdir / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ],
        workdir / "etcd.log",
    )
    apiserver = ServerProcess(
        "kube-apiserver",
        [
            str(BIN_DIR / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={certs}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-cluster-ip-range=10.0.0.0/16",  # room for a Service per fleet at 1,000s
            "--authorization-mode=RBAC",
            f"--token-auth-file={tokens}",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--v=1",
            *audit_args,
        ],
        workdir / "kube-apiserver.log",
    )
    server = f"https://127.0.0.1:{api_port}"
    ca = certs / "apiserver.crt"
    kubeconfig = workdir / "kubeconfig"
    _write_kubeconfig(kubeconfig, server, ca, token)
    cp = ControlPlane(
        workdir,
        server,
        token,
        ca,
        kubeconfig,
        etcd,
        apiserver,
        tokens=user_tokens,
        audit_log=audit_log,
    )
    etcd.start()
    apiserver.start()
    try:
        cp.wait_ready(timeout)
    except BaseException:
        cp.stop()
        raise
    return cp


def tool_path(name: str) -> str | None:
    """Path of a built tool (kubectl, helm, ...), or of one on PATH, or None."""
    built = BIN_DIR / name
    return str(built) if built.is_file() else shutil.which(name)
