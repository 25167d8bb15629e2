"""Hardening of the Ray pods a fleet runs: the Kubernetes "restricted" Pod Security Standard.

Pure functions that :mod:`shoal.planning.children` applies to every Ray pod template (head
and workers) and to KubeRay's autoscaler sidecar: a fixed non-root user (the ``ray`` user of
the ``rayproject/ray`` images), no privilege escalation, every capability dropped, the
runtime's default seccomp profile, and a read-only root filesystem with writable ``emptyDir``
volumes where Ray and the engines write (:data:`WRITABLE_DIRS`).

A namespace labelled ``pod-security.kubernetes.io/enforce: restricted`` admits these pods;
a test has the API server itself check that.
"""

from __future__ import annotations

from typing import Any

#: UID and GID of the ``ray`` user in the rayproject/ray and ray-llm images.
RAY_UID = 1000
RAY_GID = 100

#: Folders Ray, Ray Serve and the engines write to, each an ``emptyDir`` (the root filesystem
#: is read-only): Ray's session files, sockets and logs (/tmp/ray), the object store's shared
#: memory, the caches and settings vLLM, Triton and Hugging Face write under $HOME, and Ray's
#: own folder there (~/.ray: Ray 2.60 writes its authentication token there when a process
#: starts a cluster with token authentication, its default for a new local cluster).
WRITABLE_DIRS: dict[str, str] = {
    "tmp": "/tmp",
    "shm": "/dev/shm",
    "home-cache": "/home/ray/.cache",
    "home-config": "/home/ray/.config",
    "home-triton": "/home/ray/.triton",
    "home-ray": "/home/ray/.ray",
}


def container_security_context() -> dict[str, Any]:
    """What every Ray container runs with."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    """The pod-level settings of every Ray pod (the volumes it writes belong to the ray group)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "fsGroup": RAY_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def harden_pod_template(template: dict[str, Any], *, api_token: bool) -> None:
    """Make a Ray pod template meet the restricted standard, in place.

    ``api_token``: whether the pod keeps its ServiceAccount token (only the head needs one,
    for KubeRay's autoscaler sidecar that asks the API server for more workers).
    """
    spec = template["spec"]
    spec["securityContext"] = pod_security_context()
    spec["automountServiceAccountToken"] = api_token
    spec["enableServiceLinks"] = False
    volumes = spec.setdefault("volumes", [])
    for name in WRITABLE_DIRS:
        volume: dict[str, Any] = {"name": name, "emptyDir": {}}
        if name == "shm":
            volume["emptyDir"] = {"medium": "Memory"}
        volumes.append(volume)
    for container in spec["containers"]:
        container["securityContext"] = container_security_context()
        mounts = container.setdefault("volumeMounts", [])
        mounts.extend({"name": n, "mountPath": p} for n, p in WRITABLE_DIRS.items())


#: The autoscaler sidecar's resources. KubeRay's default (500m CPU and 512Mi, requested and
#: limited) reserves a quarter of a 2-CPU node for a process that idles between decisions;
#: it requests a fifth of that and may burst to KubeRay's figure.
AUTOSCALER_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}


def autoscaler_options() -> dict[str, Any]:
    """KubeRay's ``autoscalerOptions``: the autoscaler sidecar it adds to the head, hardened
    like the Ray containers (it shares the head's /tmp/ray volume with them)."""
    return {
        "securityContext": container_security_context(),
        "resources": {k: dict(v) for k, v in AUTOSCALER_RESOURCES.items()},
    }
