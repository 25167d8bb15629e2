"""Shoal's output reconciled by KubeRay's own controller, not by the test.

KubeRay's operator (the release whose CRDs the tests install) turns the RayService Shoal
renders into a RayCluster, its head and worker Pods and Services, and writes the RayService
status Shoal reads back. kube-scheduler binds the Pods to KWOK's nodes, KWOK reports them
Running, and kube-controller-manager's garbage collector deletes what a deleted owner leaves.
No Ray process runs in the Pods (no container runtime), so KubeRay never reaches a Ray
dashboard: these tests cover everything up to that point (see docs/operator.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from shoal.contract import BuildArgs, local_path
from shoal.operator.config import OperatorConfig
from shoal.operator.fleets import reconcile_fleet
from shoal.operator.gateway import KubeGateway
from shoal.planning import names
from shoal.planning.children import DEFAULT_GPU_IMAGE, DEFAULT_SERVING_IMAGE, PlanSettings
from tests.integration.kuberay.conftest import RayCluster
from tests.integration.operator.conftest import (
    calibration_configmap,
    fleet,
    policy,
    wait_for,
    yaml_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: How long KubeRay, the scheduler and KWOK get for one step (they take seconds when quiet).
STEP = 120


def gpu_fleet(name: str = "f", policy_name: str = "p", **serving: Any) -> dict[str, Any]:
    """A CPU model and a GPU model whose weights are on a PersistentVolumeClaim."""
    models = [
        {"name": "alpha", "engine": "simulated", "tier": "small", "engineArgs": {"ttft_ms": 20}},
        {"name": "math", "engine": "vllm", "source": "pvc://weights/qwen-math", "tier": "small",
         "accelerator": {"type": "L4"}, "resources": {"cpu": "4", "memory": "16Gi"},
         "engineArgs": {"max_model_len": 4096}},
    ]  # fmt: skip
    spec: dict[str, Any] = {
        "models": models,
        "serving": {"head": {"resources": {"cpu": "2", "memory": "4Gi"}}, **serving},
    }
    return fleet(name, policy_name, **spec)


def weights_claim(namespace: str) -> list[dict[str, Any]]:
    """The claim the pvc:// model names, bound (by kube-controller-manager) to a volume."""
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-weights"},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "hostPath": {"path": "/srv/weights"},
            "claimRef": {"namespace": namespace, "name": "weights"},
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "weights"},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": f"{namespace}-weights",
            "resources": {"requests": {"storage": "10Gi"}},
        },
    }
    return [volume, claim]  # fmt: skip


def static_policy(name: str = "p") -> dict[str, Any]:
    return policy(name, strategy="static", staticOrder=["alpha", "math"], calibration=None,
                  clusters=None, topP=None)  # fmt: skip


def container(pod_or_template: dict[str, Any]) -> dict[str, Any]:
    return dict(pod_or_template["spec"]["containers"][0])


def by_role(pods: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Pods by KubeRay's role labels: "head", or the worker group's name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in pods:
        labels = p["metadata"]["labels"]
        key = "head" if labels.get("ray.io/node-type") == "head" else labels["ray.io/group"]
        out.setdefault(key, []).append(p)
    return out


def running(pods: list[dict[str, Any]]) -> bool:
    return bool(pods) and all(
        p.get("status", {}).get("phase") == "Running" and p["spec"].get("nodeName") for p in pods
    )


def fleet_condition(cluster: RayCluster, type: str) -> dict[str, Any]:
    return cluster.condition("fleet", "f", type) or {}


def the_raycluster(cluster: RayCluster) -> dict[str, Any] | None:
    found = cluster.rayclusters()
    return found[0] if len(found) == 1 else None


def test_kuberay_builds_the_cluster_shoal_renders_and_shoal_reports_its_status(
    cluster: RayCluster, operator: Any
) -> None:
    with operator():
        cluster.apply(*weights_claim(cluster.ns), calibration_configmap(), policy(), gpu_fleet())
        rs = wait_for("the RayService", lambda: cluster.get("rayservice", "f"), 240)

        # KubeRay, not the test, creates the RayCluster, owned by the RayService.
        rc = wait_for("KubeRay's RayCluster", lambda: the_raycluster(cluster), STEP)
        owner = rc["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "RayService", "f", rs["metadata"]["uid"]
        )  # fmt: skip
        name = rc["metadata"]["name"]

        # Its pods carry Shoal's containers, environment, mounts and resources, and run on
        # KWOK's nodes (the GPU worker on the GPU node).
        pods = wait_for(
            "the head, CPU and GPU worker pods, scheduled and Running",
            lambda: (lambda r: r if set(r) == {"head", "cpu", "gpu-l4"} and
                     all(running(v) for v in r.values()) else None)(by_role(cluster.pods_of(name))),
            STEP,
        )  # fmt: skip
        head, cpu, gpu = (
            container(pods["head"][0]),
            container(pods["cpu"][0]),
            container(pods["gpu-l4"][0]),
        )
        assert head["image"] == cpu["image"] == DEFAULT_SERVING_IMAGE
        assert gpu["image"] == DEFAULT_GPU_IMAGE
        assert head["resources"]["limits"]["cpu"] == "2"
        assert head["resources"]["limits"]["memory"] == "4Gi"
        assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pods["gpu-l4"][0]["spec"]["nodeName"] == "gpu-0"
        settings = OperatorConfig().ray_serve_env
        for c in (head, cpu, gpu):
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert {k: env.get(k) for k in settings} == settings
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert mounts[names.ARTIFACT_MOUNT_DIR]["readOnly"] is True
        # KubeRay builds the head Service from the head container's ports: the ones workers
        # (gcs-server) and KubeRay itself (dashboard) connect to must be there.
        svc = wait_for("KubeRay's head Service", lambda: cluster.get("service", f"{name}-head-svc"))
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        assert {"gcs-server": 6379, "dashboard": 8265, "serve": names.SERVE_PORT}.items() <= (
            ports.items()
        )

        # The pvc:// model's claim is mounted in the GPU worker where the app looks for it.
        gpu_pod = pods["gpu-l4"][0]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in gpu_pod["spec"]["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
        mount = next(m for m in gpu["volumeMounts"] if m["name"] in claims)
        assert claims[mount["name"]] == "weights"
        app = yaml_app(cluster.get("rayservice", "f") or {})
        args = BuildArgs.model_validate(app["args"])
        math = next(m for m in args.fleet.models if m.name == "math")
        where = local_path(args, math)
        assert where is not None and where.startswith(mount["mountPath"] + "/")

        # KubeRay writes the RayService status; Shoal's fleet says why it is not ready.
        kuberay_ready = wait_for(
            "KubeRay's Ready condition on the RayService",
            lambda: next((c for c in (cluster.get("rayservice", "f") or {}).get("status", {})
                          .get("conditions", []) if c["type"] == "Ready"), None),
            STEP,
        )  # fmt: skip
        assert kuberay_ready["status"] == "False"
        ready = wait_for(
            "the fleet's Ready condition to carry KubeRay's reason",
            lambda: (lambda c: c if kuberay_ready["reason"] in c.get("message", "") else None)(
                fleet_condition(cluster, "Ready")
            ),
            STEP,
        )
        assert ready["status"] == "False"
        assert fleet_condition(cluster, "Progressing")["status"] == "True"
        assert "RayService not ready" in ready["message"]
        assert f"KubeRay is starting RayCluster {name}" in ready["message"]

        # Delete the fleet: the finalizer runs, the garbage collector takes what KubeRay made.
        cluster.delete("fleet", "f")
        assert cluster.get("fleet", "f") is None
        keep = {"kube-root-ca.crt", "cal", "weights", "p-router-artifact"}
        for kind in ("rayservice", "raycluster", "pods", "services", "configmaps"):
            wait_for(
                f"every {kind} of the fleet to be gone",
                lambda kind=kind: not [  # type: ignore[misc]
                    o["metadata"]["name"] for o in cluster.items(kind)
                    if o["metadata"]["name"] not in keep
                ] or None,
                STEP,
            )  # fmt: skip


def test_replicas_and_engine_args_keep_the_raycluster_an_image_change_rolls_out(
    cluster: RayCluster, operator: Any
) -> None:
    with operator():
        cluster.apply(*weights_claim(cluster.ns), static_policy(), gpu_fleet())
        rc = wait_for("KubeRay's RayCluster", lambda: the_raycluster(cluster), STEP)
        wait_for(
            "the head pod to run",
            lambda: running(by_role(cluster.pods_of(rc["metadata"]["name"])).get("head", [])),
            STEP,
        )

        # A new engine image: KubeRay's upgrade path, a new RayCluster beside the first, and
        # Shoal's fleet is Progressing meanwhile.
        cluster.apply(gpu_fleet(gpuImage="registry.example/shoal-serving:next-gpu"))

        def new_cluster() -> dict[str, Any] | None:
            for c in cluster.rayclusters():
                groups = {g["groupName"]: g for g in c["spec"]["workerGroupSpecs"]}
                image = container(groups["gpu-l4"]["template"])["image"]
                if c["metadata"]["name"] != rc["metadata"]["name"] and image.endswith(":next-gpu"):
                    return c
            return None

        upgraded = wait_for("a RayCluster with the new image", new_cluster, STEP)
        assert fleet_condition(cluster, "Progressing")["status"] == "True"
        assert fleet_condition(cluster, "Ready")["status"] == "False"
        pending = (cluster.get("rayservice", "f") or {})["status"]["pendingServiceStatus"]
        assert pending["rayClusterName"] == upgraded["metadata"]["name"]

    # An autoscaler decision: fixed replica counts, as Shoal's autoscaler renders them in its
    # Active mode (tests/integration/autoscaling covers how it decides). Applied directly, so
    # that no operator re-renders Ray Serve's own autoscaling meanwhile.
    # The first RayCluster is on its way out (KubeRay deletes it after its deletion delay):
    # compare the others.
    def clusters() -> dict[str, str]:
        return {c["metadata"]["name"]: c["metadata"]["uid"] for c in cluster.rayclusters()
                if c["metadata"]["name"] != rc["metadata"]["name"]}  # fmt: skip

    before = clusters()
    assert list(before) == [upgraded["metadata"]["name"]]
    gw = KubeGateway(cluster.cp.api_client())
    body = cluster.get("fleet", "f")
    settings = PlanSettings(replicas={"alpha": 3, "math": 2}, gpu_image=DEFAULT_GPU_IMAGE)
    reconcile_fleet(gw, OperatorConfig(), body, datetime.now(UTC), settings=settings)
    rs = cluster.get("rayservice", "f") or {}
    replicas = {d["name"]: d.get("num_replicas") for d in yaml_app(rs)["deployments"]}
    assert (replicas["model-alpha"], replicas["model-math"]) == (3, 2)
    # KubeRay 1.4 writes no status for a change it has nothing to report on (observedGeneration
    # stays behind), so wait for its reconciles instead: two finished after the write, the
    # second of which began after it.
    done = cluster.stack.reconciles()
    wait_for(
        "KubeRay to reconcile the scaled RayService",
        lambda: cluster.stack.reconciles() >= done + 2,
        STEP,
    )
    after = clusters()
    assert after == before, "a replica decision must not make KubeRay build a new RayCluster"

    # New engine arguments: only serveConfigV2 changes, which KubeRay hands to Ray Serve on the
    # same cluster (Serve redeploys the model); no new RayCluster either.
    changed = gpu_fleet(gpuImage="registry.example/shoal-serving:next-gpu")
    changed["spec"]["models"][1]["engineArgs"] = {"max_model_len": 2048}
    cluster.apply(changed)
    reconcile_fleet(gw, OperatorConfig(), cluster.get("fleet", "f"), datetime.now(UTC),
                    settings=settings)  # fmt: skip
    rs = cluster.get("rayservice", "f") or {}
    math = next(m for m in yaml_app(rs)["args"]["fleet"]["models"] if m["name"] == "math")
    assert math["engineArgs"] == {"max_model_len": 2048}
    done = cluster.stack.reconciles()
    wait_for(
        "KubeRay to reconcile the new engine arguments",
        lambda: cluster.stack.reconciles() >= done + 2,
        STEP,
    )
    after = clusters()
    assert after == before, "new engine arguments must not make KubeRay build a new RayCluster"
    events = json.loads(cluster.cp.kubectl("get", "events", "-n", cluster.ns, "-o", "json").stdout)
    created = [e for e in events["items"] if e["reason"] == "CreatedRayCluster"]
    assert len(created) == 2, [e["message"] for e in created]  # the first and the upgrade's
    assert yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["name"] == "f"
