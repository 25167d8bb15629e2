"""Pydantic and the API server judge every object alike (property-based).

Hypothesis generates specs from a mix of valid and invalid field values. Each is validated by
the Pydantic model and sent to the real API server as a dry-run create with strict field
validation. Both must accept or both reject; when both accept, the server's defaults must be
the models' defaults.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from shoal.api.v1alpha1 import GROUP, VERSION, ModelFleetSpec, RoutingPolicySpec, TenantSpec
from shoal.devtools.testing.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def mixed(draw: st.DrawFn, valid: list[Any], invalid: list[Any]) -> Any:
    """Mostly valid values, an invalid one about one time in eight."""
    pool = invalid if draw(st.integers(0, 7)) == 7 else valid
    return draw(st.sampled_from(pool))


names = mixed(["small", "large"], ["Big", "", "x" * 41, "a-", "gpu-a"])
money = mixed(["0", "1.20", "999999.9999", "12"], ["-1", "1.2.3", "abc", "1e3", "1000000", ".5"])
fractions = mixed(["0", "0.5", "1", "1.0000"], ["1.5", "0.12345", "-0", "1.01"])
sources = mixed(
    ["hf://org/m", "hf://org/m/f.gguf", "s3://bucket/key", "pvc://claim/p", "file:///m.gguf"],
    ["ftp://x/y", "hf://", "s3://B/key", "gs://bucket/a b"],
)
replicas = mixed([1, 2, 3, 6], [0, -1, 1001])


def mostly_unique(item: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[list[Any]]:
    """Lists keyed by name: mostly 1-3 distinct names, sometimes empty or with duplicates."""
    return st.one_of(
        st.lists(item, min_size=1, max_size=3, unique_by=lambda i: i["name"]),
        st.lists(item, min_size=1, max_size=3, unique_by=lambda i: i["name"]),
        st.lists(item, min_size=1, max_size=3, unique_by=lambda i: i["name"]),
        st.lists(item, min_size=0, max_size=3),
    )


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


autoscaling = optional(minReplicas=replicas, maxReplicas=replicas, scaleToZero=st.booleans())
tier = st.fixed_dictionaries(
    {"name": names, "costPerReplicaHour": money},
    optional={
        "autoscaling": autoscaling,
        "slo": optional(ttftP95Milliseconds=st.integers(-5, 700_000)),
    },
)
model = st.fixed_dictionaries(
    {"name": mixed(["math", "code", "chat"], ["Math", ""]), "tier": names, "source": sources},
    optional={
        "engine": mixed(["vllm", "llamacpp", "simulated"], ["tgi"]),
        "minReplicas": replicas,
        "maxReplicas": replicas,
        "loraAdapters": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "math"]), "source": sources}),
            max_size=2,
        ),
        "accelerator": st.fixed_dictionaries({"type": mixed(["L4", "H100", "A100", "V100", "T4"], ["bad type"])},
                                             optional={"count": st.integers(0, 9)}),
        "quantization": optional(
            method=st.sampled_from(["awq", "gptq", "fp8", "int8", "gguf", "bitsandbytes"]),
            ggufType=mixed(["Q4_K_M", "F16"], ["q4", ""]),
            kvCacheDtype=mixed(["auto", "fp8"], ["int4"])),
        "speculative": st.fixed_dictionaries(
            {"method": mixed(["ngram", "draft", "eagle3", "mtp"], ["medusa"]),
             "numSpeculativeTokens": mixed([1, 4], [0, 17])},
            optional={"draftSource": mixed(["hf://org/d", "file:///d.gguf", "s3://bucket/d"], ["x"]),
                      "promptLookupMin": st.integers(1, 4), "promptLookupMax": st.integers(1, 4)}),
    },
)  # fmt: skip
fleet_specs = st.fixed_dictionaries(
    {
        "routingPolicyRef": st.fixed_dictionaries({"name": mixed(["p"], ["", "Bad"])}),
        "tiers": mostly_unique(tier),
        "models": mostly_unique(model),
    },
    optional={"budget": st.fixed_dictionaries({"maxCostPerHour": money}, optional={"minAlpha": fractions}),
              "access": optional(mode=mixed(["Open", "Tenants"], ["Closed", "open"])),
              "serving": optional(
                  serviceType=mixed(["ClusterIP", "LoadBalancer"], ["External"]),
                  gateway=st.fixed_dictionaries(
                      {"parentRefs": st.lists(st.fixed_dictionaries(
                          {"name": mixed(["public", "gw.a"], ["Public", ""])},
                          optional={"namespace": mixed(["gateways"], ["Gateways", "a.b"]),
                                    "sectionName": mixed(["https"], ["HTTPS"])}),
                          min_size=0, max_size=2)},
                      optional={"hostnames": st.lists(mixed(
                          ["llm.example.com", "*.example.com"], ["https://x", "a..b", "*"]),
                          max_size=2)}))},
)  # fmt: skip
secret_refs = st.fixed_dictionaries(
    {"secretRef": st.fixed_dictionaries(
        {"name": mixed(["team-key", "k.v"], ["Team_Key", ""]),
         "key": mixed(["key", "api.key", "k-1"], ["a/b", ""])})},
)  # fmt: skip
tenant_specs = st.fixed_dictionaries(
    {
        "fleetRef": st.fixed_dictionaries({"name": mixed(["f"], ["", "Bad"])}),
        "apiKeys": st.lists(secret_refs, min_size=0, max_size=3),
    },
    optional={
        "limits": optional(requestsPerMinute=mixed([1, 600], [0, -1]),
                           tokensPerMinute=mixed([1000], [0]),
                           concurrentRequests=mixed([1, 20], [0, 1_000_001])),
        "budget": st.fixed_dictionaries({"maxCostPerHour": money},
                                        optional={"softLimitPercent": mixed([1, 80, 100], [0, 101])}),
        "routing": optional(minAlpha=fractions, maxAlpha=fractions),
        "allowedModels": st.lists(mixed(["math", "code"], ["Math"]), max_size=3),
        "allowedTiers": st.lists(names, max_size=2),
    },
)  # fmt: skip
calibration = st.one_of(
    st.fixed_dictionaries(
        {"uri": mixed(["s3://bucket/data.jsonl", "https://h/d.csv"], ["ftp://x/y", "s3://B/k"])}
    ),
    st.fixed_dictionaries(
        {"configMapRef": st.fixed_dictionaries({"name": mixed(["cal"], [""]), "key": st.just("k")})}
    ),
    optional(  # neither, or both: invalid
        uri=st.just("s3://bucket/data.jsonl"),
        configMapRef=st.just({"name": "cal", "key": "k"}),
    ),
)
embedder = st.one_of(
    optional(type=mixed(["minilm", "multilingual-e5"], ["bert"])),
    optional(  # openai needs endpoint and model; the others forbid them
        type=mixed(["openai"], ["minilm"]),
        endpoint=mixed(["http://embed:8000"], ["not a url"]),
        model=st.just("bge-small"),
    ),
)
policy_fields = {
    "alpha": fractions,
    "clusters": mixed([1, 16, 64, 256], [0, 257]),
    "topP": mixed([1, 2, 3], [0, 17]),
    "temperature": mixed(["0.1", "1", "0.0001", "1000"], ["0", "-1", "abc"]),
    "embedder": embedder,
    "fallbackModel": mixed(["math"], ["Bad"]),
    "allowRequestOverrides": st.booleans(),
}
# Mostly shaped like the two strategies, so about half are valid; the last form is anything.
policy_specs = st.one_of(
    st.fixed_dictionaries(
        {"strategy": mixed(["cluster"], ["random"]), "calibration": calibration},
        optional=policy_fields,
    ),
    st.fixed_dictionaries(
        {
            "strategy": st.just("static"),
            "staticOrder": mixed([["math"], ["math", "code"]], [[], ["Bad"]]),
        },
        optional=policy_fields,
    ),
    optional(
        strategy=st.sampled_from(["cluster", "static", "random"]),
        calibration=calibration,
        staticOrder=st.lists(st.sampled_from(["math", "code", "Bad"]), max_size=2),
        **policy_fields,
    ),
)


def server_verdict(api: Any, ns: str, kind: str, plural: str, spec: dict[str, Any]) -> Any:
    """The defaulted spec if the API server accepts the object, None if it rejects it."""
    from kubernetes.client import ApiException

    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": spec,
    }
    try:
        created = api.create_namespaced_custom_object(
            GROUP, VERSION, ns, plural, body, dry_run="All", field_validation="Strict"
        )
    except ApiException as exc:
        assert exc.status == 422, f"unexpected {exc.status}: {exc.body}"
        return None
    return created["spec"]


def model_verdict(model: type[BaseModel], spec: dict[str, Any]) -> BaseModel | None:
    try:
        return model.model_validate(spec)
    except ValidationError:
        return None


def check_agreement(
    control_plane: ControlPlane,
    namespace: str,
    model: type[BaseModel],
    kind: str,
    plural: str,
    specs: st.SearchStrategy[dict[str, Any]],
) -> Counter[bool]:
    from kubernetes import client

    api = client.CustomObjectsApi(control_plane.api_client())
    verdicts: Counter[bool] = Counter()

    @SETTINGS
    @given(specs)
    def agree(spec: dict[str, Any]) -> None:
        ours = model_verdict(model, spec)
        theirs = server_verdict(api, namespace, kind, plural, spec)
        assert (ours is not None) == (theirs is not None), (
            f"Pydantic {'accepts' if ours else 'rejects'} but the API server "
            f"{'accepts' if theirs else 'rejects'}: {spec}"
        )
        if ours is not None:
            assert model.model_validate(theirs) == ours, "defaults differ"
        verdicts[ours is not None] += 1

    agree()
    return verdicts


def test_fleet_models_and_server_agree(control_plane: ControlPlane, namespace: str) -> None:
    verdicts = check_agreement(
        control_plane, namespace, ModelFleetSpec, "ModelFleet", "modelfleets", fleet_specs
    )
    assert verdicts[True] >= 5 and verdicts[False] >= 5, verdicts


def test_policy_models_and_server_agree(control_plane: ControlPlane, namespace: str) -> None:
    verdicts = check_agreement(
        control_plane,
        namespace,
        RoutingPolicySpec,
        "RoutingPolicy",
        "routingpolicies",
        policy_specs,
    )
    assert verdicts[True] >= 5 and verdicts[False] >= 5, verdicts


def test_tenant_models_and_server_agree(control_plane: ControlPlane, namespace: str) -> None:
    verdicts = check_agreement(
        control_plane, namespace, TenantSpec, "Tenant", "tenants", tenant_specs
    )
    assert verdicts[True] >= 5 and verdicts[False] >= 5, verdicts
