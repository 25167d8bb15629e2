"""A cluster router whose policy embeds through an OpenAI-compatible endpoint, fitted and
served as in a cluster: the API key comes from the environment the operator renders from the
policy's Secret, and a down or refusing endpoint degrades routing instead of failing requests.
The endpoint is real HTTP on loopback (shoal.devtools.testing.embeddings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.operator.conftest import CALIBRATION

from shoal.api.v1alpha1 import RoutingPolicySpec
from shoal.contract import EMBEDDER_API_KEY_ENV
from shoal.devtools.testing.embeddings import serve_embeddings
from shoal.routing import fit_policy_router, parse_calibration
from shoal.serving.ranking import ClusterRanker

MODELS = ["alpha", "beta"]


def spec(url: str) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate({
        "clusters": 2, "topP": 1, "alpha": "1",
        "calibration": {"configMapRef": {"name": "cal", "key": "calibration.jsonl"}},
        "embedder": {"type": "openai", "endpoint": url, "model": "hash",
                     "apiKeySecretRef": {"name": "embed", "key": "token"}},
    })  # fmt: skip


def fitted(tmp_path: Path, policy: RoutingPolicySpec, api_key: str) -> str:
    samples = parse_calibration(CALIBRATION.encode(), source="calibration.jsonl")
    path = tmp_path / "router.bin"
    path.write_bytes(fit_policy_router(policy, samples, api_key=api_key))
    return str(path)


def served_ranker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, pod_key: str,
    fallback: str | None,
) -> ClusterRanker:  # fmt: skip
    """A ranker as the ingress builds it: fitted with the right key, serving with
    ``pod_key`` in the environment the operator renders."""
    policy = spec(url)
    artifact = fitted(tmp_path, policy, "s3cret")
    monkeypatch.setenv(EMBEDDER_API_KEY_ENV, pod_key)
    return ClusterRanker(artifact, MODELS, fallback, policy)


def test_served_router_embeds_with_the_key_and_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_embeddings(api_key="s3cret") as endpoint:
        ranker = served_ranker(tmp_path, monkeypatch, endpoint.url, "s3cret", None)
        math = ranker.rank("What is 14 times 3? Show the arithmetic.")
        code = ranker.rank("Write a Python function that reverses a string.")
    assert ranker.blocking  # a remote embedder runs off the event loop
    assert (math.models[0], code.models[0]) == ("alpha", "beta")
    assert math.cluster is not None and math.cluster != code.cluster
    assert set(endpoint.authorizations) == {"Bearer s3cret"}


def test_refused_or_down_endpoint_routes_by_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_embeddings(api_key="s3cret") as endpoint:
        # starts without a request
        ranker = served_ranker(tmp_path, monkeypatch, endpoint.url, "wrong", "beta")
        refused = ranker.rank("What is 14 times 3?")
    down = ranker.rank("What is 14 times 3?")  # the endpoint is gone now
    for ranking in (refused, down):
        assert ranking.cluster is None
        assert sorted(ranking.models) == MODELS
    assert endpoint.authorizations[-1] == "Bearer wrong"


def test_without_a_key_the_fit_reports_the_refusal(tmp_path: Path) -> None:
    from shoal.routing import EmbedderUnavailable

    with (
        serve_embeddings(api_key="s3cret") as endpoint,
        pytest.raises(EmbedderUnavailable, match="answered 401"),
    ):
        fitted(tmp_path, spec(endpoint.url), "not-it")
