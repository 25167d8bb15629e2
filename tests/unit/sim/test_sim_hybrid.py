"""Models served outside the fleet in the simulator: answered at once, billed per token, the
spend and the savings against the reference reported, the budget counting the bills."""

from __future__ import annotations

import pytest

from shoal.autoscaling.prometheus import windows_for
from shoal.contract.cost import ModelPrice
from shoal.sim.controllers import ScheduleController, observe
from shoal.sim.engine import ModelPool, Request
from shoal.sim.external import ExternalEndpoint
from shoal.sim.scenarios import GENERAL, LARGE, MATH, Scenario, _topic, fleet_spec
from shoal.sim.simulator import Simulator
from shoal.sim.study import run_study
from shoal.sim.workload import Constant

PRICE = ModelPrice(per_million_input=2.5, per_million_output=10.0)
REFERENCE = ModelPrice(per_million_input=10.0, per_million_output=30.0)


class Fixed:
    def __init__(self, *models: str) -> None:
        self.models = models

    def ranked(self, topic: str, prompt: int, alpha: float) -> tuple[str, ...]:
        return self.models


def requests(n: int) -> list[Request]:
    return [Request(i, 1.0 + i, "x", 0, 1000, 500) for i in range(n)]


def test_an_external_model_answers_at_once_and_bills_its_tokens() -> None:
    outside = ExternalEndpoint("frontier", "frontier", PRICE, 0.6, slo_seconds=1.0)
    own = ModelPool("m", "t", LARGE, 30.0, 3.6, slo_seconds=1.0)
    ctl = ScheduleController("fixed", {"m": [(0.0, 1)]})
    res = Simulator(
        [own], requests(10), Fixed("frontier", "m"), ctl, duration=60.0, alpha=1.0,
        external=[outside], reference=REFERENCE,
    ).run()  # fmt: skip
    assert [s[1] for s in res.served] == ["frontier"] * 10
    assert all(s[2] == pytest.approx(0.6) and s[3] for s in res.served)
    # 10 x (1000 x $2.50 + 500 x $10) / 1e6 = $0.075 of tokens, plus one replica-minute.
    assert res.external_cost_by_model == {"frontier": pytest.approx(0.075)}
    assert res.cost == pytest.approx(0.075 + 3.6 / 60)
    assert res.reference_usd == pytest.approx(10 * (1000 * 10 + 500 * 30) / 1e6)
    assert res.savings is not None and res.savings.spend_usd == pytest.approx(res.cost)


def test_its_spend_reaches_the_autoscalers_window() -> None:
    outside = ExternalEndpoint("frontier", "frontier", PRICE, 0.6, slo_seconds=1.0)
    own = ModelPool("m", "t", LARGE, 30.0, 3.6, slo_seconds=1.0)
    sim = Simulator([own], requests(30), Fixed("frontier"), ScheduleController(
        "fixed", {"m": [(0.0, 1)]}), duration=40.0, alpha=1.0, external=[outside])  # fmt: skip
    sim.run()
    spec = fleet_spec(frontier=True)
    window = observe(sim, 31.0, windows_for(spec, 15.0))
    spend = window.models["frontier"].spend_per_hour
    assert spend is not None and spend > 0


def test_the_hybrid_fleet_reports_spend_and_savings() -> None:
    scenario = Scenario(
        name="tiny-hybrid",
        description="test",
        spec=fleet_spec(frontier=True),
        topics=(
            _topic("math", MATH, Constant(1.0), frontier=True),
            _topic("general", GENERAL, Constant(1.0), frontier=True),
        ),
        duration=600.0,
        policy_alpha=1.0,  # quality first: the frontier model takes the traffic
    )
    summary = run_study(scenario, seed=0).summary()
    shoal = summary["policies"]["shoal"]
    assert shoal["external_cost_usd"]["frontier"] > 0
    assert shoal["reference_cost_usd"] > 0
    assert shoal["saved_percent"] is not None
    assert "frontier" not in shoal["peak_replicas"]  # no replicas of its own
