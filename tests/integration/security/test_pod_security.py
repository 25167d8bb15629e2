"""The API server itself judges the Ray pods Shoal renders: a namespace that enforces the
"restricted" Pod Security Standard admits every Ray head and worker pod template as a Pod,
and the same namespace refuses an unhardened pod (so the check is live, not vacuous).

Until KubeRay runs in these tests, the rendered templates stand in for the pods KubeRay
would create from them (KubeRay copies a template's securityContext and volumes as they are).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shoal.devtools.testing.controlplane import ControlPlane
from shoal.planning.children import PlanSettings, RouterArtifact, desired_children
from shoal.planning.render import pod_manifests
from tests.unit.planning.test_children import fleet, policy

pytestmark = pytest.mark.integration

ENFORCE = "pod-security.kubernetes.io/enforce"


@pytest.fixture()
def restricted_namespace(control_plane: ControlPlane) -> str:
    name = f"psa-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl(
        "label", "namespace", name, f"{ENFORCE}=restricted", f"{ENFORCE}-version=latest"
    )
    return name


def _create(cp: ControlPlane, namespace: str, pod: dict[str, Any]) -> Any:
    pod["metadata"]["namespace"] = namespace
    return cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)


def test_rendered_ray_pods_are_admitted_under_restricted(
    control_plane: ControlPlane, restricted_namespace: str
) -> None:
    art = RouterArtifact(checksum="sha256:" + "ab" * 32, data=b"x")
    children = desired_children(fleet(), policy(), art, PlanSettings())
    pods = pod_manifests(children.rayservice)
    assert [p["metadata"]["name"] for p in pods] == ["f-head", "f-cpu", "f-gpu-a100", "f-gpu-l4"]
    for pod in pods:
        out = _create(control_plane, restricted_namespace, pod)
        assert out.returncode == 0, f"{pod['metadata']['name']}: {out.stderr}"
        assert "Warning" not in out.stderr, out.stderr
    listed = control_plane.kubectl("get", "pods", "-n", restricted_namespace, "-o", "name").stdout
    assert sorted(listed.split()) == sorted(f"pod/{p['metadata']['name']}" for p in pods)


def test_an_unhardened_pod_is_refused_there(
    control_plane: ControlPlane, restricted_namespace: str
) -> None:
    """The namespace really enforces: the same head template without its securityContext fails."""
    art = RouterArtifact(checksum="sha256:" + "ab" * 32, data=b"x")
    head = pod_manifests(desired_children(fleet(), policy(), art, PlanSettings()).rayservice)[0]
    del head["spec"]["securityContext"]
    for container in head["spec"]["containers"]:
        del container["securityContext"]
    out = _create(control_plane, restricted_namespace, head)
    assert out.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in out.stderr, out.stderr
