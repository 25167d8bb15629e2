"""The serving contract with the operator: BuildArgs and deployment naming."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from serving_fleets import fleet_spec, sim_args

from shoal.api.v1alpha1.common import parse_quantity
from shoal.contract import (
    INGRESS_DEPLOYMENT,
    BuildArgs,
    deployment_plans,
    model_deployment_name,
    serve_application,
)


def test_round_trip_through_serve_args() -> None:
    args = BuildArgs.parse(sim_args(["a", "b"], replicas={"a": 2}))
    again = BuildArgs.parse(args.to_serve_args())
    assert again == args
    # camelCase API wire form inside the args
    assert "routingPolicyRef" in args.to_serve_args()["fleet"]


def test_deployment_names_and_settings() -> None:
    spec = fleet_spec(
        [
            {"name": "math", "engine": "simulated", "resources": {"cpu": "500m", "memory": "1Gi"}},
            {"name": "code", "engine": "llamacpp", "source": "file:///m/c.gguf", "minReplicas": 2,
             "maxReplicas": 3},
            {"name": "big", "engine": "vllm", "source": "hf://org/big",
             "accelerator": {"type": "L4", "count": 2}},
        ],
        autoscaling={"targetOngoingRequests": 16, "scaleUpCooldownSeconds": 10},
    )  # fmt: skip
    args = BuildArgs.parse(
        {"fleet_name": "f", "fleet": spec, "policy": {"strategy": "static", "staticOrder": ["math"]},
         "replicas": {"big": 3}}
    )  # fmt: skip
    plans = {p.model: p for p in deployment_plans(args)}
    assert plans["math"].deployment_name == model_deployment_name("math") == "model-math"
    assert plans["math"].ray_actor_options == {"num_cpus": 0.5, "memory": 2**30}
    assert plans["code"].autoscaling_config == {
        "min_replicas": 2, "initial_replicas": 2, "max_replicas": 3,
        "target_ongoing_requests": 16, "upscale_delay_s": 10, "downscale_delay_s": 300,
    }  # fmt: skip
    assert plans["code"].ray_actor_options == {"num_cpus": 1.0}
    assert plans["big"].num_replicas == 3 and plans["big"].autoscaling_config is None
    assert plans["big"].ray_actor_options["num_gpus"] == 2
    assert plans["big"].ray_actor_options["accelerator_type"] == "L4"
    assert plans["math"].max_ongoing_requests == 32
    app = serve_application(args)
    assert app["import_path"] == "shoal.serving.app:build_app"
    names = [d["name"] for d in app["deployments"]]
    assert names == [INGRESS_DEPLOYMENT, "model-math", "model-code", "model-big"]


def test_a_parked_model_may_run_zero_to_one_replicas_starting_at_zero() -> None:
    args = BuildArgs.parse(sim_args(["a", "b"], replicas={"a": 0, "b": 2}))
    plans = {p.model: p for p in deployment_plans(args)}
    assert args.parked == {"a"}
    cfg = plans["a"].autoscaling_config
    assert plans["a"].num_replicas is None and cfg is not None
    assert (cfg["min_replicas"], cfg["initial_replicas"], cfg["max_replicas"]) == (0, 0, 1)
    assert "num_replicas" not in plans["a"].deployment_options()
    assert plans["b"].num_replicas == 2


@pytest.mark.parametrize(
    ("q", "value"), [("500m", 0.5), ("4", 4), ("1.5", 1.5), ("2Gi", 2**31), ("1k", 1000)]
)
def test_quantities(q: str, value: float) -> None:
    assert float(parse_quantity(q)) == value


def test_rejects_bad_references() -> None:
    with pytest.raises(ValidationError, match="unknown models"):
        BuildArgs.parse(sim_args(["a"], static=["a", "zzz"]))
    with pytest.raises(ValidationError, match="unknown models"):
        BuildArgs.parse(sim_args(["a"], replicas={"b": 1}))
    with pytest.raises(ValidationError, match="router_artifact_path"):
        BuildArgs.parse(
            {**sim_args(["a"]), "policy": {"strategy": "cluster",
                                          "calibration": {"uri": "https://x.io/c.jsonl"}}}
        )  # fmt: skip
    with pytest.raises(ValidationError, match="default_max_tokens"):
        BuildArgs.parse(sim_args(["a"], limits={"max_tokens": 10, "default_max_tokens": 20}))


def test_config_module_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, shoal.contract; assert 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_serving_image_runs_with_the_ray_serve_settings_of_the_code() -> None:
    import re

    from shoal.contract import RAY_SERVE_ENV
    from shoal.devtools.testing import REPO_ROOT

    dockerfile = (REPO_ROOT / "serving" / "Dockerfile").read_text()
    env = dict(re.findall(r"\b(RAY(?:_SERVE|LLM)_[A-Z_]+)=(\S+)", dockerfile))
    assert env == RAY_SERVE_ENV
    assert 'pip install ".[serving]"' in dockerfile
    # The image's Ray is the version the fleet spec defaults to.
    from shoal.api.v1alpha1.fleet import ServingSpec

    version = re.search(r"ARG RAY_VERSION=(\S+)", dockerfile)
    assert version and version.group(1) == ServingSpec().ray_version


def test_local_ray_env_is_set_for_ray_init_and_restored_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from shoal.contract import RAY_SERVE_ENV
    from shoal.local.ray_env import LOCAL_RAY_SERVE_ENV, local_ray_env

    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # the caller's own value
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    monkeypatch.delenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", raising=False)
    with local_ray_env():
        for key, value in {**RAY_SERVE_ENV, **LOCAL_RAY_SERVE_ENV}.items():
            assert os.environ[key] == value
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in os.environ


def test_local_ray_env_gives_haproxy_free_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two local Rays on one machine must not fight over HAProxy's fixed default ports."""
    import os

    from shoal.local.ray_env import HAPROXY_PORT_VARIABLES, local_ray_env

    for key in HAPROXY_PORT_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    with local_ray_env():
        first = [os.environ[k] for k in HAPROXY_PORT_VARIABLES]
    assert all(p.isdigit() and p not in ("9101", "8404") for p in first)
    assert all(k not in os.environ for k in HAPROXY_PORT_VARIABLES)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")  # the caller's choice wins
    with local_ray_env():
        assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
