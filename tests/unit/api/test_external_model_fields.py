"""Models served outside the fleet (engine openai) and the savings reference, in Python: the
same rules the API server enforces as CEL (test_cel_rules.py holds the server's side)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from shoal.api.v1alpha1 import ModelFleetSpec

EXTERNAL: dict[str, Any] = {
    "name": "big",
    "engine": "openai",
    "tier": "frontier",
    "external": {
        "baseUrl": "https://api.openai.com/v1",
        "model": "gpt-4o",
        "apiKeySecretRef": {"name": "openai", "key": "key"},
        "price": {"inputPerMillion": "2.50", "outputPerMillion": "10.00"},
    },
}


def spec(*extra: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "routingPolicyRef": {"name": "p"},
        "tiers": [
            {"name": "small", "costPerReplicaHour": "0.40"},
            {"name": "frontier", "costPerReplicaHour": "0"},
        ],
        "models": [
            {"name": "tiny", "engine": "llamacpp", "source": "file:///m/t.gguf", "tier": "small"},
            *extra,
        ],
    }
    out.update(fields)
    return out


def external(**changes: Any) -> dict[str, Any]:
    model = copy.deepcopy(EXTERNAL)
    ext = changes.pop("external", None)
    model.update(changes)
    if ext is not None:
        model["external"].update(ext)
    return model


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        ModelFleetSpec.model_validate(data)
    return str(err.value)


def test_an_external_model_parses_with_defaults_and_no_deployment_fields() -> None:
    parsed = ModelFleetSpec.model_validate(spec(external()))
    big = parsed.models[1]
    assert big.is_external and big.external is not None
    assert big.external.price.cost(1_000_000, 100_000) == pytest.approx(3.5)
    assert (big.external.first_token_timeout_seconds, big.external.request_timeout_seconds) == (
        30,
        300,
    )
    assert [m.name for m in parsed.external_models()] == ["big"]
    assert [m.name for m in parsed.fleet_models()] == ["tiny"]


def test_every_external_model_has_a_price() -> None:
    model = external()
    del model["external"]["price"]
    assert "price" in refused(spec(model))


@pytest.mark.parametrize(
    "field", [{"minReplicas": 1}, {"maxReplicas": 2}, {"accelerator": {"type": "L4"}},
              {"resources": {"cpu": "1"}}],
)  # fmt: skip
def test_replica_fields_are_refused_on_an_external_model(field: dict[str, Any]) -> None:
    assert "has no replicas" in refused(spec(external(**field)))


def test_a_source_is_refused_on_an_external_model() -> None:
    assert "has no source" in refused(spec(external(source="hf://org/big")))


def test_external_needs_engine_openai_and_the_other_way_round() -> None:
    no_block = external()
    del no_block["external"]
    assert "external is required for engine openai" in refused(spec(no_block))
    other = external(engine="vllm", source="hf://org/big")
    assert "external is required for engine openai" in refused(spec(other))


@pytest.mark.parametrize(
    "url", ["ftp://api.example.com/v1", "https://", "api.example.com/v1", "https://h/v1?x=1"]
)
def test_the_base_url_must_be_an_http_url(url: str) -> None:
    assert "baseUrl" in refused(spec(external(external={"baseUrl": url})))


@pytest.mark.parametrize("price", ["-1", "1e3", "2.123456", "abc"])
def test_prices_are_decimal_strings(price: str) -> None:
    ext = {"price": {"inputPerMillion": price, "outputPerMillion": "1"}}
    assert "inputPerMillion" in refused(spec(external(external=ext)))


def test_the_secret_reference_is_a_secret_name_and_key() -> None:
    ext = {"apiKeySecretRef": {"name": "Not_A_Name", "key": "k"}}
    assert "apiKeySecretRef" in refused(spec(external(external=ext)))
    ext = {"apiKeySecretRef": {"name": "ok"}}
    assert "apiKeySecretRef" in refused(spec(external(external=ext)))


def test_timeouts_must_nest() -> None:
    ext = {"firstTokenTimeoutSeconds": 60, "requestTimeoutSeconds": 30}
    assert "firstTokenTimeoutSeconds may not exceed" in refused(spec(external(external=ext)))


def test_savings_reference_is_one_external_model_or_a_price() -> None:
    ok = ModelFleetSpec.model_validate(spec(external(), savings={"referenceModel": "big"}))
    assert ok.savings is not None and ok.savings.reference_model == "big"
    price = {"inputPerMillion": "10", "outputPerMillion": "30"}
    ok = ModelFleetSpec.model_validate(spec(savings={"referencePrice": price}))
    assert ok.savings is not None and ok.savings.reference_price is not None
    assert "exactly one of referenceModel and referencePrice" in refused(spec(savings={}))
    assert "savings.referenceModel must name" in refused(
        spec(external(), savings={"referenceModel": "tiny"})
    )


def test_logprobs_capability_is_declared_only_for_external_models() -> None:
    caps = {"capabilities": {"logprobs": True}}
    ModelFleetSpec.model_validate(spec(external(**caps)))
    data = spec()
    data["models"][0].update(caps)
    assert "capabilities.logprobs applies only to engine openai" in refused(data)
