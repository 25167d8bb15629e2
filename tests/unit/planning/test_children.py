"""Desired children of a fleet: deterministic, owned, named stably, shaped as KubeRay wants."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from shoal.api.v1alpha1 import ModelFleet, RoutingPolicy
from shoal.contract import RAY_SERVE_ENV, local_path
from shoal.planning import names
from shoal.planning.children import (
    PlanError,
    PlanSettings,
    RouterArtifact,
    build_args,
    desired_children,
)

ART = RouterArtifact(checksum="sha256:" + "ab" * 32, data=b"artifact-bytes")


def fleet(**spec_changes: Any) -> ModelFleet:
    spec: dict[str, Any] = {
        "routingPolicyRef": {"name": "p"},
        "tiers": [
            {"name": "cpu", "costPerReplicaHour": "0.10"},
            {"name": "gpu", "costPerReplicaHour": "2.40",
             "autoscaling": {"minReplicas": 1, "maxReplicas": 3}},
        ],
        "models": [
            {"name": "tiny", "engine": "llamacpp", "source": "file:///m/tiny.gguf", "tier": "cpu",
             "resources": {"cpu": "2"}},
            {"name": "math", "source": "hf://Qwen/Qwen2.5-Math-7B-Instruct", "tier": "gpu",
             "accelerator": {"type": "L4"}, "engineArgs": {"max_model_len": 4096}},
            {"name": "code", "source": "hf://Qwen/Qwen2.5-Coder-7B-Instruct", "tier": "gpu",
             "accelerator": {"type": "A100", "count": 2}, "maxReplicas": 2},
        ],
    }  # fmt: skip
    spec.update(spec_changes)
    return ModelFleet.model_validate(
        {"metadata": {"name": "f", "namespace": "ns", "uid": "u-1", "generation": 3}, "spec": spec}
    )


def policy(**spec: Any) -> RoutingPolicy:
    spec.setdefault("calibration", {"configMapRef": {"name": "cal", "key": "k"}})
    return RoutingPolicy.model_validate(
        {"metadata": {"name": "p", "namespace": "ns"}, "spec": spec}
    )


def test_same_input_same_bytes() -> None:
    a = desired_children(fleet(), policy(), ART, PlanSettings())
    b = desired_children(fleet(), policy(), ART, PlanSettings())
    assert json.dumps(a.objects(), sort_keys=True) == json.dumps(b.objects(), sort_keys=True)
    assert a.rayservice["spec"]["serveConfigV2"] == b.rayservice["spec"]["serveConfigV2"]


def test_children_are_owned_and_named_stably() -> None:
    children = desired_children(fleet(), policy(), ART, PlanSettings()).objects()
    assert [(o["kind"], o["metadata"]["name"]) for o in children] == [
        ("ConfigMap", "f-router"), ("NetworkPolicy", "f"), ("PodDisruptionBudget", "f-workers"),
        ("RayService", "f"), ("Service", "f"),
    ]  # fmt: skip
    for obj in children:
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelFleet", "name": "f", "uid": "u-1",
            "controller": True, "blockOwnerDeletion": True,
        }  # fmt: skip
        assert obj["metadata"]["labels"][names.FLEET_LABEL] == "f"
        assert obj["metadata"]["namespace"] == "ns"


def test_serve_config_has_router_and_one_deployment_per_model() -> None:
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert app["import_path"] == "shoal.serving.app:build_app"
    assert app["name"] == "f"
    assert [d["name"] for d in app["deployments"]] == [
        "router",
        "model-tiny",
        "model-math",
        "model-code",
    ]
    assert app["args"]["router_artifact_path"] == "/etc/shoal/router/router.bin"
    math = next(d for d in app["deployments"] if d["name"] == "model-math")
    assert math["ray_actor_options"]["num_gpus"] == 1
    assert math["ray_actor_options"]["accelerator_type"] == "L4"
    assert math["autoscaling_config"]["max_replicas"] == 3
    assert app["args"]["fleet"]["models"][1]["engineArgs"] == {"max_model_len": 4096}


def test_worker_groups_per_accelerator_type() -> None:
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert sorted(groups) == ["cpu", "gpu-a100", "gpu-l4"]
    a100 = groups["gpu-a100"]
    assert (a100["minReplicas"], a100["maxReplicas"]) == (1, 2)
    limits = a100["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 2
    assert groups["gpu-l4"]["maxReplicas"] == 3
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    mounts = head["template"]["spec"]["containers"][0]["volumeMounts"]
    assert mounts[0]["mountPath"] == names.ARTIFACT_MOUNT_DIR


def _ray_containers(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]}
    pods |= {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}
    return {name: pod["spec"]["containers"][0] for name, pod in pods.items()}


def test_every_ray_pod_can_host_the_ingress() -> None:
    """Ray may place the ingress on any node with CPUs, GPU workers included: each gets the
    router artifact."""
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    for name, container in _ray_containers(rs).items():
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert mounts[0] == names.ARTIFACT_MOUNT_DIR, name
        assert not any(e["name"] == "SHOAL_EMBEDDER_API_KEY" for e in container["env"]), name


def test_every_ray_container_runs_ray_serve_in_the_fleets_mode() -> None:
    """HAProxy and direct ingress must be on for every node alike, whatever image runs."""
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    for name, container in _ray_containers(rs).items():
        env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("RAY_")}
        assert env == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}, (
            name
        )


def test_feedback_key_reaches_every_ray_pod_from_the_fleets_secret() -> None:
    """Every ingress replica signs and verifies completion ids with the same key, from the
    fleet's Secret mounted as a file (never a value in the pod spec, its environment or
    serveConfigV2)."""
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    for group in [rs["spec"]["rayClusterConfig"]["headGroupSpec"],
                  *rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]]:  # fmt: skip
        spec = group["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["SHOAL_FEEDBACK_KEY_FILE"] == {
            "name": "SHOAL_FEEDBACK_KEY_FILE", "value": "/etc/shoal/feedback/key"}  # fmt: skip
        assert "SHOAL_FEEDBACK_KEY" not in env
        assert {"name": "feedback-key", "mountPath": "/etc/shoal/feedback",
                "readOnly": True} in container["volumeMounts"]  # fmt: skip
        (volume,) = [v for v in spec["volumes"] if v["name"] == "feedback-key"]
        assert volume["secret"] == {"secretName": "f-feedback-key", "optional": True,
                                    "items": [{"key": "key", "path": "key"}]}  # fmt: skip
    assert "SHOAL_FEEDBACK_KEY" not in rs["spec"]["serveConfigV2"]


def test_feedback_key_secret_is_owned_by_the_fleet() -> None:
    from shoal.planning.children import desired_feedback_key_secret

    s = desired_feedback_key_secret(fleet(), "k" * 64)
    assert s["metadata"]["name"] == "f-feedback-key"
    assert s["metadata"]["ownerReferences"][0]["kind"] == "ModelFleet"
    assert s["stringData"] == {"key": "k" * 64}


def test_operator_overrides_reach_every_ray_container() -> None:
    settings = PlanSettings(ray_serve_env={**RAY_SERVE_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "0"})
    rs = desired_children(fleet(), policy(), ART, settings).rayservice
    for name, container in _ray_containers(rs).items():
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0", name


def test_openai_embedder_key_reaches_every_ray_pod_from_its_secret() -> None:
    embedder = {"type": "openai", "endpoint": "http://embed:8000/v1", "model": "bge",
                "apiKeySecretRef": {"name": "embed-key", "key": "token"}}  # fmt: skip
    rs = desired_children(fleet(), policy(embedder=embedder), ART, PlanSettings()).rayservice
    for name, container in _ray_containers(rs).items():
        assert container["env"][-1] == {
            "name": "SHOAL_EMBEDDER_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "embed-key", "key": "token"}},
        }, name  # fmt: skip


def test_artifact_configmap_holds_the_bytes() -> None:
    cm = desired_children(fleet(), policy(), ART, PlanSettings()).router_configmap
    assert cm is not None
    assert base64.b64decode(cm["binaryData"][names.ARTIFACT_KEY]) == ART.data
    assert cm["metadata"]["annotations"][names.ARTIFACT_ANNOTATION] == ART.checksum


def test_static_strategy_needs_no_artifact() -> None:
    children = desired_children(
        fleet(), policy(strategy="static", staticOrder=["tiny", "math"]), None, PlanSettings()
    )
    assert children.router_configmap is None
    head = children.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "router-artifact" not in [v["name"] for v in head["volumes"]]


def test_cluster_strategy_without_artifact_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="fitted router artifact"):
        desired_children(fleet(), policy(), None, PlanSettings())


def test_fallback_model_outside_the_fleet_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="unknown models referenced: ghost"):
        desired_children(fleet(), policy(fallbackModel="ghost"), ART, PlanSettings())


def test_autoscaler_replicas_pin_num_replicas() -> None:
    children = desired_children(fleet(), policy(), ART, PlanSettings(replicas={"math": 2}))
    app = yaml.safe_load(children.rayservice["spec"]["serveConfigV2"])["applications"][0]
    math = next(d for d in app["deployments"] if d["name"] == "model-math")
    assert math["num_replicas"] == 2 and "autoscaling_config" not in math


def test_images_default_from_settings_and_fleet_wins() -> None:
    settings = PlanSettings(image="cpu:1", gpu_image="gpu:1")
    rs = desired_children(fleet(), policy(), ART, settings).rayservice
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "cpu:1"
    gpu = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    assert gpu["image"] == "gpu:1"
    rs = desired_children(fleet(serving={"image": "mine:2"}), policy(), ART, settings).rayservice
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "mine:2"


def test_service_selects_serving_pods_of_the_fleet() -> None:
    svc = desired_children(fleet(), policy(), ART, PlanSettings()).service
    assert svc["spec"]["selector"] == {names.FLEET_LABEL: "f", "ray.io/serve": "true"}
    assert svc["spec"]["ports"][0]["port"] == 8000


def _groups(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    return {g["groupName"]: g for g in cluster["workerGroupSpecs"]}


def test_pvc_models_have_their_claim_mounted_where_the_app_looks() -> None:
    models = [
        {"name": "tiny", "engine": "llamacpp", "source": "pvc://weights/gguf/tiny.gguf",
         "tier": "cpu"},
        {"name": "math", "source": "pvc://gpu-weights/qwen-math", "tier": "gpu",
         "accelerator": {"type": "L4"}},
        {"name": "code", "source": "hf://Qwen/Qwen2.5-Coder-7B-Instruct", "tier": "gpu",
         "accelerator": {"type": "A100"}},
    ]  # fmt: skip
    children = desired_children(fleet(models=models), policy(), ART, PlanSettings())
    groups = _groups(children.rayservice)

    def mounts(group: dict[str, Any]) -> dict[str, str]:
        spec = group["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}  # fmt: skip
        return {claims[m["name"]]: m["mountPath"]
                for m in spec["containers"][0].get("volumeMounts", []) if m["name"] in claims}  # fmt: skip

    assert mounts(groups["cpu"]) == {"weights": "/mnt/shoal/pvc/weights"}
    assert mounts(groups["gpu-l4"]) == {"gpu-weights": "/mnt/shoal/pvc/gpu-weights"}
    assert mounts(groups["gpu-a100"]) == {}
    # Where the Ray Serve app reads each pvc:// model's weights lies under its claim's mount.
    f = fleet(models=models)
    args = build_args(f, policy(), ART, PlanSettings())
    by_name = {m.name: m for m in f.spec.models}
    assert local_path(args, by_name["tiny"]) == "/mnt/shoal/pvc/weights/gguf/tiny.gguf"
    assert local_path(args, by_name["math"]) == "/mnt/shoal/pvc/gpu-weights/qwen-math"
    # The router artifact stays mounted beside the claims.
    cpu_mounts = groups["cpu"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert [m["name"] for m in cpu_mounts][:2] == ["router-artifact", "model-pvc-0"]
    # (after them, the writable emptyDirs of the read-only root filesystem)
    assert all(m["readOnly"] for m in cpu_mounts[:2])


def test_head_declares_the_ports_kuberay_builds_its_head_service_from() -> None:
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000,
                     "metrics": 8080}  # fmt: skip


def test_default_images_are_shoals_serving_images() -> None:
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].startswith("localhost/shoal-serving:")
    gpu = _groups(rs)["gpu-l4"]["template"]["spec"]["containers"][0]
    assert gpu["image"] == head["image"] + "-gpu"
