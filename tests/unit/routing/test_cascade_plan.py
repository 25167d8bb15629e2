"""The cascade plan's thresholds and its round trip through an artifact header."""

from __future__ import annotations

import json
import math

import pytest

from shoal.routing.cascade_plan import CascadePlan, CascadePlanError


def test_a_plan_accepts_at_or_above_its_clusters_threshold() -> None:
    plan = CascadePlan("logprob_mean", (-0.5, math.inf), default_threshold=-1.0)
    assert plan.accepts(0, -0.5)
    assert not plan.accepts(0, -0.6)
    assert not plan.accepts(1, 10.0)
    assert plan.accepts(None, -0.9)
    assert not plan.accepts(7, -1.1)


def test_a_plan_survives_a_json_header_with_infinities() -> None:
    plan = CascadePlan("agreement", (-math.inf, 0.5), 0.25, max_chain=3, fitted_on="routerbench")
    header = json.loads(json.dumps({"cascade": plan.to_header()}))
    assert CascadePlan.from_header(header) == plan
    assert CascadePlan.from_header({}) is None


def test_bad_plans_are_refused_with_the_reason() -> None:
    with pytest.raises(CascadePlanError, match="unknown cascade signal"):
        CascadePlan("vibes", (), 0.0)
    with pytest.raises(CascadePlanError, match="malformed"):
        CascadePlan.from_header({"cascade": {"signal": "verifier"}})
    with pytest.raises(CascadePlanError, match="2 thresholds for 3 clusters"):
        CascadePlan("verifier", (0.1, 0.2), 0.1).check_clusters(3)


def test_a_plan_carries_its_fitted_chains_through_the_header() -> None:
    from shoal.routing.cascade_plan import CascadeChain

    chains = (
        CascadeChain("small", ("voter",), "big", kind="choice", weights=(0.5, -1.0), bias=0.2),
        CascadeChain("big", kind="code"),
    )
    plan = CascadePlan("verifier", (0.7, -math.inf), 0.7, max_chain=3, chains=chains)
    header = json.loads(json.dumps({"cascade": plan.to_header()}))
    back = CascadePlan.from_header(header)
    assert back == plan
    assert back is not None and back.chain(0) == chains[0] and back.chain(5) is None
    assert chains[0].calls == 3 and chains[1].calls == 1
    # A plan without chains (the original contract) reads as before.
    bare = CascadePlan("agreement", (0.5,), 0.5)
    assert "chains" not in bare.to_header() and bare.chain(0) is None
    with pytest.raises(CascadePlanError, match="1 chains for 2 thresholds"):
        CascadePlan("verifier", (0.1, 0.2), 0.1, chains=chains[:1])
    with pytest.raises(CascadePlanError, match="malformed"):
        CascadePlan.from_header({"cascade": {**plan.to_header(), "chains": [{"voters": []}]}})


def test_a_routed_chain_and_the_ex_ante_estimate_travel_and_old_chains_still_parse() -> None:
    from shoal.routing.cascade_plan import ROUTED, CascadeChain, ExAnte

    routed = CascadeChain(ROUTED, kind="choice", alpha=0.35)
    verified = CascadeChain(
        "small", ("voter",), "big", kind="choice", weights=(0.5, -1.0, 2.0), bias=0.2,
        exante=ExAnte((0.6, 0.9), top_p=2, temperature=0.1),
    )  # fmt: skip
    plan = CascadePlan("verifier", (-math.inf, 0.7), 0.7, max_chain=3, chains=(routed, verified))
    raw = json.loads(json.dumps({"cascade": plan.to_header()}))
    assert CascadePlan.from_header(raw) == plan
    assert routed.routed and routed.calls == 1 and not verified.routed
    # A chain written before routed chains and the ex-ante feature has neither key.
    old = {"answer": "big", "voters": [], "escalate": None, "kind": "code", "weights": []}
    assert CascadeChain.from_header(old) == CascadeChain("big", kind="code")
    assert "alpha" not in CascadeChain("big").to_header()
    assert "exante" not in CascadeChain("big").to_header()
    with pytest.raises(CascadePlanError, match="needs the router's alpha"):
        CascadeChain(ROUTED)
    with pytest.raises(CascadePlanError, match="needs the router's alpha"):
        CascadeChain("big", alpha=0.5)
    # Nearest centroid 1 (0.9) dominates at temperature 0.1: weights e^0 and e^-4.
    w = math.exp(-0.4 / 0.1)
    assert verified.exante is not None
    assert verified.exante.estimate([0.5, 0.9]) == pytest.approx((0.9 + w * 0.6) / (1 + w))
