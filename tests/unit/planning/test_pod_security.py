"""Ray pods meet the restricted Pod Security Standard: what each template carries.

The API server's own verdict on the same templates is in
tests/integration/operator/test_pod_security.py; these pin the shape."""

from __future__ import annotations

from typing import Any

from tests.unit.planning.test_children import ART, fleet, policy

from shoal.planning.children import PlanSettings, desired_children
from shoal.planning.security import RAY_UID, WRITABLE_DIRS


def _templates() -> dict[str, dict[str, Any]]:
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    cluster = rs["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    out |= {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}
    return out


def test_every_ray_container_runs_restricted() -> None:
    templates = _templates()
    assert sorted(templates) == ["cpu", "gpu-a100", "gpu-l4", "head"]
    for name, template in templates.items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["runAsUser"] == RAY_UID, name
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            assert ctx["readOnlyRootFilesystem"] is True, name


def test_read_only_root_has_writable_scratch_folders() -> None:
    for name, template in _templates().items():
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        for volume, path in WRITABLE_DIRS.items():
            assert mounts[path] == volume, (name, path)
            assert "emptyDir" in volumes[volume], (name, volume)
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory"}, name
        assert "/tmp" in mounts, name  # Ray's session folder lives in /tmp/ray


def test_only_the_head_keeps_an_api_token() -> None:
    tokens = {n: t["spec"]["automountServiceAccountToken"] for n, t in _templates().items()}
    assert tokens == {"head": True, "cpu": False, "gpu-a100": False, "gpu-l4": False}


def test_kuberay_autoscaler_sidecar_is_hardened_too() -> None:
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    ctx = rs["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["capabilities"] == {"drop": ["ALL"]}
    # Not KubeRay's 500m request: a fleet fits a 2-CPU node with the sidecar beside it.
    res = rs["spec"]["rayClusterConfig"]["autoscalerOptions"]["resources"]
    assert res["requests"] == {"cpu": "100m", "memory": "256Mi"}
