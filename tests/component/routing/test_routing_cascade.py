"""Cascades on RouterBench: fitted on the train split, replayed on the test split.

Every model's recorded answer and cost is in RouterBench's files, so a cascade is replayed
without calling any model (:mod:`shoal.routing.cascade_fit`): the figures here are the ones
docs/routing.md reports. Slow (the default embedder, like test_routing_public_data.py); reads
``$SHOAL_DATA_DIR/routing``, skips without it and fails under ``SHOAL_REQUIRE_SERVERS=1``.
Issue 31's three targets are met (the verifier reads the router's ex-ante estimate; clusters
that are not cascaded are served by the router's own per-query choice).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import pytest
from test_routing_public_data import RB_PARAMS, embedder, split

from shoal.routing import fit_router, load_router
from shoal.routing.artifact import decode_artifact
from shoal.routing.cascade_fit import RouterTables, evaluate_cascades, fit_artifact_plan
from shoal.routing.cascade_plan import ROUTED, CascadePlan
from shoal.routing.evaluate import evaluate_router

pytestmark = pytest.mark.slow

GPT4 = "gpt-4-1106-preview"
SIGNALS = ("agreement", "verifier", "verifier+agreement", "verifier+agreement-3")


@cache
def router_blob() -> bytes:
    train, x_train = split("routerbench", "train")
    return fit_router(train, embedder=embedder(), embeddings=x_train, **RB_PARAMS)


@cache
def cascades() -> dict[str, Any]:
    train, x_train = split("routerbench", "train")
    test, x_test = split("routerbench", "test")
    router = load_router(router_blob(), embedder=embedder())
    sweep = evaluate_router(router, test, x_test)["sweep"]
    return evaluate_cascades(
        router, train, x_train, test, x_test, reference=GPT4, routing=sweep, strategies=SIGNALS
    )


def strategy(name: str) -> dict[str, Any]:
    out: dict[str, Any] = cascades()["strategies"][name]
    return out


def test_the_reference_and_single_shot_routing_are_those_of_the_router_figures() -> None:
    block = cascades()
    assert block["reference_accuracy"] == pytest.approx(0.8289, abs=5e-4)
    assert block["reference_cost"] == pytest.approx(4.796, abs=5e-3)
    assert strategy(f"single:{GPT4}")["cost_fraction_at_reference"] == 1.0
    # Single-shot routing: nothing between 81.44% at 30.9% and 83.15% at 81.6% of GPT-4's cost.
    routing = strategy("routing")
    assert routing["cost_fraction_at_99"] == pytest.approx(0.816, abs=0.002)
    assert routing["cost_fraction_at_reference"] == pytest.approx(0.816, abs=0.002)


@pytest.mark.parametrize(
    ("name", "at_99", "beats_routing"),
    [
        ("agreement", 0.54, True),
        ("verifier", 0.40, True),
        ("verifier+agreement", 0.44, True),
        ("verifier+agreement-3", 0.46, True),
    ],
)
def test_each_cascade_reaches_99_percent_of_gpt4(
    name: str, at_99: float, beats_routing: bool
) -> None:
    entry = strategy(f"cascade:{name}")
    assert entry["cost_fraction_at_99"] is not None
    assert entry["cost_fraction_at_99"] <= at_99
    # Every cascade reaches it for much less than routing (81.6%); the verifier alone only
    # since it reads the router's ex-ante estimate (83.7% without it).
    routing = strategy("routing")["cost_fraction_at_99"]
    assert (entry["cost_fraction_at_99"] < routing) is beats_routing
    # Every attempt is paid: no cascade point is cheaper than its cheapest model alone.
    assert min(p["cost_fraction"] for p in entry["points"]) > 0.015


def test_cascades_reach_gpt4s_full_accuracy() -> None:
    reach = {n: strategy(f"cascade:{n}")["cost_fraction_at_reference"] for n in SIGNALS}
    assert reach["verifier+agreement"] is not None and reach["verifier+agreement"] <= 0.45
    assert reach["verifier+agreement-3"] is not None and reach["verifier+agreement-3"] <= 0.49
    assert reach["agreement"] is not None and reach["agreement"] <= 0.82


def test_a_cascade_reaches_gpt4s_full_accuracy_cheaper_than_routing() -> None:
    # Issue 31: measured 44.7% of GPT-4's cost (verifier+agreement) against routing's 81.6%.
    best = min(strategy(f"cascade:{n}")["cost_fraction_at_reference"] or math.inf for n in SIGNALS)
    assert best < 0.46 < strategy("routing")["cost_fraction_at_reference"]


def test_the_operating_point_chosen_on_train_alone_holds_on_test() -> None:
    chosen = strategy("cascade:verifier+agreement")["chosen_on_train"]["at_99"]
    assert chosen is not None
    assert chosen["accuracy"] >= 0.80
    assert chosen["cost_fraction"] <= 0.35


def test_a_cascade_reaches_99_percent_of_gpt4_at_40_percent_of_its_cost() -> None:
    # Issue 31: measured 38.9% (verifier with the ex-ante estimate; 48.1% before it), 0.07
    # point over 99%; train-only CV does not confirm the estimate's gain (docs/routing.md).
    best = min(strategy(f"cascade:{n}")["cost_fraction_at_99"] or math.inf for n in SIGNALS)
    assert best <= 0.40


def test_the_cascade_frontier_is_at_or_above_routing_everywhere() -> None:
    # Issue 31: single-shot routing is a plan (every chain ROUTED), so the cascade's sweep
    # contains routing's points; the fitted plans add the points above it.
    for name in SIGNALS:
        assert strategy(f"cascade:{name}")["worst_gap_to_routing"] >= 0.0


def test_routed_options_are_the_routers_own_choices() -> None:
    _, x_test = split("routerbench", "test")
    router = load_router(router_blob(), embedder=embedder())
    tables = RouterTables(router.quality, router.cost, router.top_p, router.temperature)
    sims = x_test.astype("float32") @ router.centroids.T
    alphas = (0.0, 0.1, 0.5, 0.8, 1.0)
    got = tables.first_choices(sims, alphas)
    for j, a in enumerate(alphas):
        assert (got[:, j] == router.rank_embeddings(x_test, alpha=a)[:, 0]).all()


def test_a_fitted_plan_travels_in_the_artifact_header() -> None:
    train, x_train = split("routerbench", "train")
    blob, plan = fit_artifact_plan(
        router_blob(), train, x_train, signal="verifier+agreement", cost_weight=0.1,
        reference=GPT4, fitted_on="routerbench train",
    )  # fmt: skip
    header, _ = decode_artifact(blob)
    assert CascadePlan.from_header(header) == plan
    plan.check_clusters(header["clusters"])
    escalating = [c for c in plan.chains if c.escalate is not None]
    assert escalating, "a plan at this weight escalates somewhere"
    assert any(c.escalate == GPT4 for c in escalating)
    assert all(c.voters and c.weights and c.exante for c in escalating)
    assert all(c.answer == ROUTED and c.alpha is not None for c in plan.chains if not c.escalate)
    assert {c.kind for c in plan.chains} == {"choice", "code"}
