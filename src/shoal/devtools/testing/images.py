"""Shoal's container images, built and run the way a Kubernetes node runs them, for tests.

:func:`build_images` runs ``hack/build-images.sh`` (the archives are cached by a hash of
their inputs, so a second call is quick) and returns the archives' paths. :class:`Podman`
loads an archive and runs a container from it with the settings of a pod's container
(:func:`container_run_args`: its user, read-only root filesystem, dropped capabilities,
no privilege escalation, and every ``emptyDir`` the pod mounts, on disk or in memory), so
that a test sees what the kubelet would start, without a cluster.

Podman is the runtime: daemonless, it runs an OCI image under crun with those settings
taken one for one from the pod spec, and it reads the same image store buildah writes.
Only containers these helpers start are ever removed (by the name they gave them).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.devtools.testing import REPO_ROOT

#: The names the archives' images carry (hack/build-images.sh).
OPERATOR_IMAGE = "localhost/shoal-operator:dev"
SERVING_IMAGE = "localhost/shoal-serving:dev"

#: What the build script needs, and the runtime.
BUILD_TOOLS = ("buildah", "mmdebstrap")
RUNTIME = "podman"


def missing_tools() -> list[str]:
    """The commands that building or running the images needs and this machine lacks."""
    needed = [*BUILD_TOOLS, RUNTIME]
    return [tool for tool in needed if shutil.which(tool) is None]


def build_images(*targets: str, timeout: float = 3600) -> list[Path]:
    """Build (or find cached) the archives of ``targets`` (operator, serving, kuberay)."""
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-images.sh"), *targets],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"hack/build-images.sh failed:\n{out.stderr[-4000:]}")
    return [Path(line) for line in out.stdout.split()]


def podman_global_args() -> list[str]:
    """Podman's options for this machine: the cgroupfs manager where systemd does not run
    the machine, and runc where cgroups are hybrid (v1 with a v2 mount), which crun refuses."""
    args = []
    if not Path("/run/systemd/system").is_dir():
        args.append("--cgroup-manager=cgroupfs")
    if Path("/sys/fs/cgroup/unified").is_dir() and shutil.which("runc"):
        args.append("--runtime=runc")
    return args


def ulimit_args() -> list[str]:
    """Limits a container may have here: podman's defaults (a million files) exceed the hard
    limits of a root without CAP_SYS_RESOURCE, and then no container starts. The kubelet
    leaves limits as they are; so do these."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    procs = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    cap = 32768  # above this runc's setrlimit is refused on some VMs whatever the shell says
    files = cap * 32 if files == resource.RLIM_INFINITY else min(files, cap * 32)
    procs = cap if procs == resource.RLIM_INFINITY else min(procs, cap)
    return [f"--ulimit=nofile={files}:{files}", f"--ulimit=nproc={procs}:{procs}"]


def container_run_args(
    pod_spec: dict[str, Any], container: dict[str, Any], volume_root: Path
) -> list[str]:
    """``podman run`` options equal to the kubelet's settings for ``container`` of ``pod_spec``.

    Each ``emptyDir`` becomes a fresh directory under ``volume_root`` with the kubelet's
    mode (0777), or a tmpfs for ``medium: Memory``; other volumes are not mounted.
    """
    pod_sc = pod_spec.get("securityContext") or {}
    sc = {**pod_sc, **(container.get("securityContext") or {})}
    args: list[str] = []
    user = sc.get("runAsUser")
    if user is not None:
        group = sc.get("runAsGroup", 0)
        args.append(f"--user={user}:{group}")
    if pod_sc.get("fsGroup") is not None:
        args.append(f"--group-add={pod_sc['fsGroup']}")
    if sc.get("readOnlyRootFilesystem"):
        # Podman would mount its own tmpfs on /tmp, /var/tmp and /run; the kubelet does not.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    caps = sc.get("capabilities") or {}
    for cap in caps.get("drop") or []:
        args.append(f"--cap-drop={cap.lower()}")
    for cap in caps.get("add") or []:
        args.append(f"--cap-add={cap.lower()}")
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"], {})
        if "emptyDir" not in volume:
            continue
        target = mount["mountPath"]
        if (volume["emptyDir"] or {}).get("medium") == "Memory":
            args.append(f"--mount=type=tmpfs,destination={target},tmpfs-mode=1777")
        else:
            source = volume_root / f"{mount['name']}-{uuid.uuid4().hex[:6]}"
            source.mkdir(parents=True)
            source.chmod(0o777)
            args.append(f"--volume={source}:{target}:rw")
    for env in container.get("env") or []:
        if "value" in env:
            args.append(f"--env={env['name']}={env['value']}")
    return args


@dataclass
class Podman:
    """Loads image archives and runs containers; removes only the containers it started."""

    started: list[str] = field(default_factory=list)

    def _podman(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RUNTIME, *podman_global_args(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def load(self, archive: Path) -> str:
        """Load a docker-archive tar; returns the image name it carries."""
        out = self._podman("load", "--input", str(archive))
        if out.returncode != 0:
            raise RuntimeError(f"podman load {archive}: {out.stderr}")
        names = [line.split(": ", 1)[1] for line in out.stdout.splitlines() if ": " in line]
        if not names:
            raise RuntimeError(f"podman load {archive} named no image: {out.stdout}")
        return names[-1].split(",")[0].strip()

    def size_bytes(self, image: str) -> int:
        out = self._podman("image", "inspect", "--format", "{{.Size}}", image)
        return int(out.stdout.strip())

    def run(
        self,
        image: str,
        run_args: list[str],
        command: list[str],
        *,
        network: str = "none",
        timeout: float = 300,
        entrypoint: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in a new container to its end; returns its result."""
        name = self._name()
        extra = [f"--entrypoint={entrypoint}"] if entrypoint is not None else []
        try:
            return self._podman(
                "run", "--rm", f"--name={name}", f"--network={network}", *ulimit_args(), *extra,
                *run_args,
                image, *command, timeout=timeout,
            )  # fmt: skip
        finally:
            self._remove(name)

    def start(
        self,
        image: str,
        run_args: list[str],
        command: list[str],
        *,
        network: str = "host",
        entrypoint: str | None = None,
    ) -> str:
        """Start a container in the background; returns its name (stopped by :meth:`close`)."""
        name = self._name()
        extra = [f"--entrypoint={entrypoint}"] if entrypoint is not None else []
        out = self._podman(
            "run", "--detach", f"--name={name}", f"--network={network}", *ulimit_args(), *extra,
            *run_args,
            image, *command,
        )  # fmt: skip
        if out.returncode != 0:
            self._remove(name)
            raise RuntimeError(f"podman run {image}: {out.stderr}")
        return name

    def image_user(self, image: str) -> str:
        """The user an image runs as (its USER)."""
        out = self._podman("image", "inspect", "--format", "{{.Config.User}}", image)
        return out.stdout.strip()

    def logs(self, name: str) -> str:
        out = self._podman("logs", name)
        return out.stdout + out.stderr

    def running(self, name: str) -> bool:
        out = self._podman("inspect", "--format", "{{.State.Running}}", name)
        return out.stdout.strip() == "true"

    def close(self) -> None:
        for name in list(self.started):
            self._remove(name)

    def _name(self) -> str:
        name = f"shoal-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.started.append(name)
        return name

    def _remove(self, name: str) -> None:
        if name in self.started:
            self._podman("rm", "--force", "--time=5", name, timeout=60)
            self.started.remove(name)
