"""Which external models' keys the operator lets the ingress send: only a Secret its owner
labelled shoal.dev/model-key=true and whose allowed hosts name the endpoint's host. The
gateway here is a fake over a dict (the API-server path is tested in
tests/integration/operator)."""

from __future__ import annotations

import copy
from typing import Any

from shoal.api.v1alpha1 import ModelFleet
from shoal.api.v1alpha1.fleet import ModelFleetStatus
from shoal.operator.external import (
    HOST_NOT_ALLOWED,
    NOT_FOUND,
    NOT_MARKED,
    key_grants,
    report_refusals,
)

SECRET_VALUE = "c2stdGVzdC1zZWNyZXQtdmFsdWU="  # base64 of the key: must appear nowhere


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
    return {"metadata": meta, "data": {"token": SECRET_VALUE}}


def fleet(*names_and_secrets: tuple[str, str]) -> ModelFleet:
    models: list[dict[str, Any]] = [{"name": "tiny", "engine": "simulated", "tier": "t"}]
    for model, secret_name in names_and_secrets:
        models.append({
            "name": model, "engine": "openai", "tier": "t",
            "external": {"baseUrl": "https://api.example.com/v1", "model": "m",
                         "apiKeySecretRef": {"name": secret_name, "key": "token"},
                         "price": {"inputPerMillion": "1", "outputPerMillion": "1"}},
        })  # fmt: skip
    return ModelFleet.model_validate(
        {
            "metadata": {"name": "f", "namespace": "ns"},
            "spec": {"routingPolicyRef": {"name": "p"},
                     "tiers": [{"name": "t", "costPerReplicaHour": "0"}], "models": models},
        }
    )  # fmt: skip


MARK = {"shoal.dev/model-key": "true"}


def test_only_a_marked_secret_for_the_endpoints_host_is_granted() -> None:
    gw = FakeGateway(
        {
            "good": secret("good", MARK, "other.example.com, API.example.com"),
            "unmarked": secret("unmarked", {}, "api.example.com"),
            "embedder-only": secret("embedder-only", {"shoal.dev/embedder-key": "true"},
                                    "api.example.com"),
            "elsewhere": secret("elsewhere", MARK, "evil.example.net"),
            "no-hosts": secret("no-hosts", MARK, None),
        }
    )  # fmt: skip
    f = fleet(("a", "good"), ("b", "unmarked"), ("c", "embedder-only"), ("d", "elsewhere"),
              ("e", "no-hosts"), ("g", "missing"))  # fmt: skip
    grants = key_grants(gw, f)  # type: ignore[arg-type]
    assert grants.granted == frozenset({"a"})
    assert grants.refusal_reasons == {
        "b": NOT_MARKED, "c": NOT_MARKED, "d": HOST_NOT_ALLOWED, "e": HOST_NOT_ALLOWED,
        "g": NOT_FOUND,
    }  # fmt: skip
    for problem in grants.refused.values():
        assert SECRET_VALUE not in problem.message
    assert "shoal.dev/model-key=true" in grants.refused["b"].message
    assert "'api.example.com'" in grants.refused["d"].message


def test_a_secret_without_the_named_key_is_refused() -> None:
    s = secret("good", MARK, "api.example.com")
    s["data"] = {"other": SECRET_VALUE}
    grants = key_grants(FakeGateway({"good": s}), fleet(("a", "good")))  # type: ignore[arg-type]
    assert grants.refusal_reasons == {"a": NOT_FOUND}


def test_a_model_without_a_key_needs_no_grant() -> None:
    f = fleet()
    assert key_grants(FakeGateway({}), f) == key_grants(FakeGateway({}), f)  # type: ignore[arg-type]
    assert not key_grants(FakeGateway({}), f).refused  # type: ignore[arg-type]


def test_refusals_are_reported_once_per_change(caplog: Any) -> None:
    f = fleet(("b", "unmarked"))
    grants = key_grants(FakeGateway({"unmarked": secret("unmarked", {}, None)}), f)  # type: ignore[arg-type]
    with caplog.at_level("WARNING"):
        report_refusals({"metadata": {"name": "f"}}, f, grants)
    assert NOT_MARKED in caplog.text and SECRET_VALUE not in caplog.text
    # The status already shows the refusal: no second event.
    shown = f.model_copy(
        update={"status": ModelFleetStatus.model_validate(
            {"models": [{"name": "b", "tier": "t", "state": NOT_MARKED}]})}
    )  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING"):
        report_refusals({"metadata": {"name": "f"}}, shown, grants)
    assert NOT_MARKED not in caplog.text
