"""The RayService's rendered ``serveConfigV2`` deploys for real on a local Ray Serve.

KubeRay hands ``serveConfigV2`` to Ray Serve's deploy-config API; this test does the same on a
local Ray, with simulated engines and a fitted router artifact. The only change made to the
rendered config is where the artifact lives (a temp file instead of the ConfigMap mount) and
the HTTP port (a free one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shoal.api.v1alpha1 import ModelFleet, RoutingPolicy
from shoal.devtools.testing import require
from shoal.devtools.testing.controlplane import free_port as _free_port
from shoal.planning.children import PlanSettings, RouterArtifact, desired_children
from shoal.routing import Sample, artifact_checksum, fit_router
from shoal.routing.embedders.hashing import HashingEmbedder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLEET = ModelFleet.model_validate({
    "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": 1},
    "spec": {
        "routingPolicyRef": {"name": "p"},
        "tiers": [{"name": "small", "costPerReplicaHour": "0.20"}],
        "models": [
            {"name": "mathy", "engine": "simulated", "tier": "small", "minReplicas": 1,
             "maxReplicas": 1, "resources": {"cpu": "100m"}},
            {"name": "codey", "engine": "simulated", "tier": "small", "minReplicas": 1,
             "maxReplicas": 1, "resources": {"cpu": "100m"}},
        ],
    },
})  # fmt: skip
POLICY = RoutingPolicy.model_validate({
    "metadata": {"name": "p", "namespace": "ns"},
    "spec": {"clusters": 2, "topP": 1,
             "calibration": {"configMapRef": {"name": "cal", "key": "k"}}},
})  # fmt: skip


def _artifact() -> RouterArtifact:
    samples = [
        Sample(prompt=f"compute {a} plus {b} and multiply", task="math",
               scores={"mathy": 1.0, "codey": 0.0})
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]
    ] + [
        Sample(prompt=f"write a python function to {t}", task="code",
               scores={"mathy": 0.0, "codey": 1.0})
        for t in ["sort a list", "parse json", "read a file", "zip lists", "reverse text", "add"]
    ]  # fmt: skip
    data = fit_router(samples, embedder=HashingEmbedder(256), clusters=2, top_p=1, alpha=1.0)
    return RouterArtifact(artifact_checksum(data), data)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    try:
        import ray
        from ray import serve
    except ImportError:
        require(False, "ray[serve] is not installed")
        return
    from shoal.local.ray_env import local_ray_env

    with local_ray_env():  # the Ray Serve settings the operator puts on every Ray container
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def port() -> int:
    """The Serve HTTP port of this module's Ray (Serve keeps the first one it was given)."""
    return _free_port()


def rendered_config(settings: PlanSettings, tmp_path: Path, port: int) -> dict[str, Any]:
    """The RayService's serveConfigV2 as the operator renders it. Only where the artifact
    lives (a file standing in for the ConfigMap volume) and the HTTP port change."""
    artifact = _artifact()
    rs = desired_children(FLEET, POLICY, artifact, settings).rayservice
    config: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])
    path = tmp_path / "router.bin"
    path.write_bytes(artifact.data)
    (app,) = config["applications"]
    app["args"]["router_artifact_path"] = str(path)
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    return config


def deploy(config: dict[str, Any]) -> None:
    """What KubeRay does with serveConfigV2: Ray Serve's deploy-config API."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(http_options=schema.http_options.model_dump())
    client.deploy_apps(schema, _blocking=False)


def wait_running(app: str, timeout: float = 180) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        apps = serve.status().applications
        state = apps[app].status if app in apps else None
        if state == "RUNNING":
            return
        if state == "DEPLOY_FAILED":
            pytest.fail(f"Serve application failed: {apps[app].message}")
        time.sleep(1)
    pytest.fail(f"Serve application {app} not RUNNING after {timeout}s (last: {state})")


def test_rendered_serve_config_deploys_and_answers(
    local_ray: None, port: int, tmp_path: Path
) -> None:
    deploy(rendered_config(PlanSettings(), tmp_path, port))
    wait_running("demo")

    base = f"http://127.0.0.1:{port}/v1"
    models = httpx.get(f"{base}/models", timeout=30).json()
    assert {m["id"] for m in models["data"]} >= {"mathy", "codey"}
    answered = {}
    for prompt in ["compute 40 plus 2 and multiply", "write a python function to sort a list"]:
        resp = httpx.post(f"{base}/chat/completions", timeout=60, json={
            "model": "auto", "max_tokens": 8,
            "messages": [{"role": "user", "content": prompt}],
        })  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
        answered[prompt] = resp.headers["x-shoal-model"]
    assert answered == {
        "compute 40 plus 2 and multiply": "mathy",
        "write a python function to sort a list": "codey",
    }


def test_parked_model_runs_no_replica_and_is_routed_around(
    local_ray: None, port: int, tmp_path: Path
) -> None:
    """Shoal's autoscaler scaled mathy to zero: Ray Serve accepts the rendered 0..1 range
    starting at 0, runs no replica of it, and the ingress answers math with codey."""
    from ray import serve

    deploy(rendered_config(PlanSettings(replicas={"mathy": 0, "codey": 1}), tmp_path, port))
    wait_running("demo")
    base = f"http://127.0.0.1:{port}/v1"
    deadline, answered_by = time.monotonic() + 120, None
    while time.monotonic() < deadline:  # until the new config serves (an in-place update)
        try:
            resp = httpx.post(f"{base}/chat/completions", timeout=60, json={
                "model": "auto", "max_tokens": 8,
                "messages": [{"role": "user", "content": "compute 40 plus 2 and multiply"}],
            })  # fmt: skip
        except httpx.TransportError:
            resp = None
        if resp is not None and resp.status_code == 200:
            answered_by = resp.headers["x-shoal-model"]
            if answered_by == "codey":
                break
        time.sleep(1)
    assert answered_by == "codey"
    wait_running("demo")
    mathy = serve.status().applications["demo"].deployments["model-mathy"]
    assert sum(mathy.replica_states.values()) == 0, mathy
    assert mathy.status == "HEALTHY", mathy
