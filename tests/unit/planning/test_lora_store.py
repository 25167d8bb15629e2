"""LoRA adapters from an object store: where each adapter is, what the replicas are told,
which pods get the credentials file, and when the operator grants it. The gateway is a fake
over a dict (the API-server path of Secrets is tested in tests/integration/operator); the
adapters served for real from a local S3 server: tests/integration/serving/test_vllm_lora.py."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shoal.api.v1alpha1 import ModelFleet, ModelSpec, RoutingPolicy
from shoal.contract import BuildArgs
from shoal.contract.lora import (
    LORA_CREDENTIALS_DIR,
    adapter_folder,
    adapter_source,
    lora_store_env,
    routable_models,
)
from shoal.operator.lora import HOST_NOT_ALLOWED, NOT_FOUND, NOT_MARKED, credential_grants
from shoal.planning.children import PlanSettings, desired_children
from shoal.planning.status import model_statuses

SECRET_VALUE = "W2RlZmF1bHRdCmF3c19hY2Nlc3Nfa2V5X2lkPXNlY3JldA=="  # must appear nowhere
STORE = {
    "uri": "s3://adapters/tiny",
    "endpoint": "http://minio.storage.svc:9000",
    "region": "us-east-1",
    "credentialsSecretRef": {"name": "store", "key": "credentials"},
}


def model(**fields: Any) -> dict[str, Any]:
    return {"name": "tiny", "tier": "cpu", "source": "hf://org/tiny",
            "loraAdapters": [{"name": "legal"}, {"name": "sql"}], "loraStore": STORE,
            **fields}  # fmt: skip


def fleet(*models: dict[str, Any]) -> ModelFleet:
    return ModelFleet.model_validate(
        {
            "metadata": {"name": "f", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": {"routingPolicyRef": {"name": "p"},
                     "tiers": [{"name": "cpu", "costPerReplicaHour": "0.10"}],
                     "models": list(models)},
        }
    )  # fmt: skip


def test_adapters_are_found_under_the_store_folder() -> None:
    m = ModelSpec.model_validate(model())
    assert adapter_source(m, "legal") == "s3://adapters/tiny/legal"
    assert adapter_folder(m) == "s3://adapters/tiny"
    own = ModelSpec.model_validate(
        model(loraAdapters=[{"name": "legal", "source": "s3://adapters/tiny/legal/"}])
    )
    assert adapter_source(own, "legal") == "s3://adapters/tiny/legal"
    split = ModelSpec.model_validate(
        model(loraAdapters=[{"name": "legal", "source": "s3://other/x/legal"}, {"name": "sql"}])
    )
    with pytest.raises(ValueError, match="share one parent folder"):
        adapter_folder(split)


def test_replicas_are_told_the_endpoint_and_the_credentials_file_not_a_key() -> None:
    env = lora_store_env(ModelSpec.model_validate(model()))
    assert env == {
        "AWS_ENDPOINT_URL_S3": "http://minio.storage.svc:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SHARED_CREDENTIALS_FILE": f"{LORA_CREDENTIALS_DIR}/tiny",
    }
    bare = model(loraStore={"uri": "s3://adapters/tiny"})
    assert lora_store_env(ModelSpec.model_validate(bare)) == {}


def test_the_rendered_llm_config_carries_the_store_settings() -> None:
    pytest.importorskip("ray", reason="ray[serve] not installed")
    from shoal.serving.engines.vllm import llm_config

    args = BuildArgs.parse(
        {"fleet_name": "f", "fleet": fleet(model()).spec.to_k8s(),
         "policy": {"strategy": "static", "staticOrder": ["tiny:legal", "tiny"]}}
    )  # fmt: skip
    config = llm_config(args, args.model("tiny"))
    assert config.lora_config.dynamic_lora_loading_path == "s3://adapters/tiny"
    env = config.runtime_env["env_vars"]
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.storage.svc:9000"
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == f"{LORA_CREDENTIALS_DIR}/tiny"


def test_a_static_order_may_name_adapters_of_the_fleet_only() -> None:
    spec = fleet(model()).spec
    assert routable_models(spec) == ["tiny", "tiny:legal", "tiny:sql"]
    raw = {"fleet_name": "f", "fleet": spec.to_k8s(),
           "policy": {"strategy": "static", "staticOrder": ["tiny:legal", "tiny"]}}  # fmt: skip
    assert BuildArgs.parse(raw).policy.static_order == ["tiny:legal", "tiny"]
    raw["policy"] = {"strategy": "static", "staticOrder": ["tiny:nope", "tiny"]}
    with pytest.raises(ValueError, match="tiny:nope"):
        BuildArgs.parse(raw)


class FakeGateway:
    """``get`` over a dict of Secrets (a fake)."""

    def __init__(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.secrets = secrets

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        assert kind == "Secret"
        found = self.secrets.get(name)
        return copy.deepcopy(found) if found is not None else None


def secret(name: str, labels: dict[str, str], hosts: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels}
    if hosts is not None:
        meta["annotations"] = {"shoal.dev/allowed-hosts": hosts}
    return {"metadata": meta, "data": {"credentials": SECRET_VALUE}}


MARK = {"shoal.dev/object-store-credentials": "true"}


def _with_secret(name: str, secret_name: str, endpoint: str | None = None) -> dict[str, Any]:
    store = {**STORE, "credentialsSecretRef": {"name": secret_name, "key": "credentials"}}
    if endpoint is None:
        store.pop("endpoint")
    else:
        store["endpoint"] = endpoint
    return model(name=name, loraStore=store)


def test_only_a_marked_secret_for_the_stores_host_is_granted() -> None:
    gw = FakeGateway(
        {
            "good": secret("good", MARK, "minio.storage.svc"),
            "aws": secret("aws", MARK, "s3.amazonaws.com"),
            "unmarked": secret("unmarked", {}, "minio.storage.svc"),
            "model-key": secret("model-key", {"shoal.dev/model-key": "true"}, "minio.storage.svc"),
            "elsewhere": secret("elsewhere", MARK, "evil.example.net"),
        }
    )  # fmt: skip
    f = fleet(
        _with_secret("a", "good", "http://minio.storage.svc:9000"),
        _with_secret("b", "aws"),
        _with_secret("c", "unmarked", "http://minio.storage.svc:9000"),
        _with_secret("d", "model-key", "http://minio.storage.svc:9000"),
        _with_secret("e", "elsewhere", "http://minio.storage.svc:9000"),
        _with_secret("g", "missing", "http://minio.storage.svc:9000"),
    )
    grants = credential_grants(gw, f)  # type: ignore[arg-type]
    assert grants.granted == frozenset({"a", "b"})
    assert grants.refusal_reasons == {
        "c": NOT_MARKED, "d": NOT_MARKED, "e": HOST_NOT_ALLOWED, "g": NOT_FOUND,
    }  # fmt: skip
    assert SECRET_VALUE not in json.dumps([p.message for p in grants.refused.values()])
    states = {s.name: s.state for s in model_statuses(f, {}, [], grants.refusal_reasons)}
    assert states["c"] == NOT_MARKED and states["a"] is None


def _pods(children: Any) -> list[tuple[str, dict[str, Any]]]:
    spec = children.rayservice["spec"]["rayClusterConfig"]
    return [("head", spec["headGroupSpec"]["template"])] + [
        (g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]
    ]


def test_granted_credentials_are_mounted_as_a_file_where_the_model_runs() -> None:
    gpu = _with_secret("big", "good", "http://minio.storage.svc:9000")
    gpu["accelerator"] = {"type": "L4"}
    f = fleet(model(), gpu)
    pol = RoutingPolicy.model_validate(
        {"metadata": {"name": "p", "namespace": "ns"},
         "spec": {"strategy": "static", "staticOrder": ["tiny:legal", "tiny", "big"]}}
    )  # fmt: skip
    settings = PlanSettings(granted_lora_credentials=frozenset({"tiny", "big"}))
    pods = dict(_pods(desired_children(f, pol, None, settings)))
    assert set(pods) == {"head", "cpu", "gpu-l4"}

    def mounted(template: dict[str, Any]) -> list[str]:
        volumes = [
            v for v in template["spec"].get("volumes", []) if v["name"] == "lora-credentials"
        ]
        return [i["path"] for v in volumes for s in v["projected"]["sources"]
                for i in s["secret"]["items"]]  # fmt: skip

    assert mounted(pods["head"]) == []
    assert mounted(pods["cpu"]) == ["tiny"] and mounted(pods["gpu-l4"]) == ["big"]
    mount = [m for m in pods["cpu"]["spec"]["containers"][0]["volumeMounts"]
             if m["name"] == "lora-credentials"]  # fmt: skip
    assert mount == [{"name": "lora-credentials", "mountPath": LORA_CREDENTIALS_DIR,
                      "readOnly": True}]  # fmt: skip
    for _, template in _pods(desired_children(f, pol, None, PlanSettings())):
        assert mounted(template) == []  # nothing granted, nothing mounted
    rendered = json.dumps(desired_children(f, pol, None, settings).rayservice)
    assert SECRET_VALUE not in rendered
