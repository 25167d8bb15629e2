"""Whether a fleet may be rendered with its policy: the policy's Fitted condition for its
generation, and the embedder settings the artifact was fitted with (the paths against the
real API server are in tests/integration/operator/test_verified_policy.py)."""

from __future__ import annotations

from typing import Any

from shoal.api.v1alpha1 import RoutingPolicy
from shoal.planning.artifacts import embedder_digest
from shoal.planning.verification import POLICY_NOT_VERIFIED, policy_gate


def _policy(generation: int, fitted: tuple[str, str, int] | None, **embedder: Any) -> RoutingPolicy:
    body: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "ns", "generation": generation},
        "spec": {"calibration": {"configMapRef": {"name": "c", "key": "k"}},
                 "embedder": {"type": "openai", "endpoint": "https://embed.example/v1",
                              "model": "m", **embedder}},
    }  # fmt: skip
    if fitted is not None:
        status, reason, gen = fitted
        body["status"] = {"conditions": [{
            "type": "Fitted", "status": status, "reason": reason, "message": "m",
            "observedGeneration": gen, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}  # fmt: skip
    return RoutingPolicy.model_validate(body)


def test_verified_for_the_current_generation() -> None:
    assert policy_gate(_policy(2, ("True", "Fitted", 2))) == (None, None)


def test_an_older_verification_counts_only_for_the_same_embedder() -> None:
    old = _policy(1, ("True", "Fitted", 1))
    moved = _policy(2, ("True", "Fitted", 1), endpoint="https://elsewhere.example/v1")
    assert policy_gate(_policy(2, ("True", "Fitted", 1)), embedder_digest(old)) == (None, None)
    waiting, problem = policy_gate(moved, embedder_digest(old))
    assert problem is None and waiting is not None and "generation 2" in waiting
    waiting, _ = policy_gate(_policy(2, ("True", "Fitted", 1)), None)  # no annotation
    assert waiting is not None


def test_a_failed_verification_is_a_problem_and_a_first_fit_a_wait() -> None:
    waiting, problem = policy_gate(_policy(2, ("False", "Forbidden", 2)))
    assert waiting is None and problem is not None and problem.reason == POLICY_NOT_VERIFIED
    assert "Forbidden" in problem.message
    waiting, problem = policy_gate(_policy(1, ("False", "Fitting", 1)))
    assert problem is None and waiting is not None
    assert policy_gate(_policy(1, None))[0] is not None
