"""Spillover in the simulator: the ingress's rule on a step, its counts, the demand the
autoscaler sees, and the autoscaler's bridge (the spill taker sized while replicas start)."""

from __future__ import annotations

import json
from collections import deque

import pytest
from typer.testing import CliRunner

import shoal.sim.study as study
from shoal.autoscaling.policy import PolicySettings
from shoal.cli import app
from shoal.routing.spillover import SpillPolicy
from shoal.sim.engine import ModelPool, Request
from shoal.sim.scenarios import CODE, GENERAL, LARGE, MATH, Scenario, _topic, fleet_spec
from shoal.sim.simulator import Simulator
from shoal.sim.study import run_study, spill_takers
from shoal.sim.workload import Bursts, Constant, Step, Sum


def sharp() -> Scenario:
    """Twenty minutes: steady traffic; math jumps at once to 6x, decaying over 10 minutes."""
    return Scenario(
        name="sharp",
        description="test",
        spec=fleet_spec(),
        topics=(
            _topic("math", MATH, Sum((Constant(2.0), Step(10.0, (300.0,), 600.0)))),
            _topic("general", GENERAL, Constant(2.0)),
        ),
        duration=1200.0,
    )


@pytest.fixture(scope="module")
def runs() -> tuple[dict[str, object], dict[str, object]]:
    off = run_study(sharp(), seed=0).summary()
    on = run_study(sharp(), seed=0, spillover=SpillPolicy(True, 0.4)).summary()
    return off, on


def test_spillover_keeps_more_requests_in_slo_on_a_step(runs: tuple[dict, dict]) -> None:  # type: ignore[type-arg]
    off, on = runs
    assert off["spilled_share"] == 0 and off["spillover"] is None
    assert on["spillover"] == {
        "max_quality_drop": 0.4,
        "slo_share": 1.0,
        "bridge": 0.0,
        "takers": None,
    }
    assert on["slo_attainment"] > off["slo_attainment"], (on, off)
    assert 0 < on["spilled_share"] < 0.2
    spilled = on["policies"]["shoal"]["spilled"]
    # Math's jump spills to the next-ranked models within the allowance (general's own
    # requests may spill on in turn while math's take its room), never back to math.
    from_math = sum(n for pair, n in spilled.items() if pair.startswith("math-7b->"))
    assert from_math > 0.5 * sum(spilled.values()), spilled
    assert not any(pair.endswith("->math-7b") for pair in spilled), spilled
    # The loss is the router's table's: the first choice's quality less the taker's.
    assert 0 < on["quality_lost_per_spilled"] <= 0.4


def test_a_tight_allowance_spills_nothing(runs: tuple[dict, dict]) -> None:  # type: ignore[type-arg]
    # Math's alternatives are 0.24 and more below it in the router's tables.
    tight = run_study(sharp(), seed=0, spillover=SpillPolicy(True, 0.1)).summary()
    off, _ = runs
    assert tight["spilled_share"] == 0
    assert tight["slo_attainment"] == off["slo_attainment"]


class _Fixed:
    """Routing of a fake fleet: every request ranks the same, with fixed qualities."""

    def __init__(self, order: tuple[str, ...], quality: dict[str, float]) -> None:
        self.order = order
        self.q = quality

    def ranked(self, topic: str, prompt: int, alpha: float) -> tuple[str, ...]:
        return self.order

    def quality(self, topic: str, prompt: int) -> dict[str, float]:
        return self.q


class _Hold:
    name = "hold"
    interval_seconds = 1e9

    def __init__(self, replicas: dict[str, int]) -> None:
        self.replicas = replicas

    def initial(self) -> dict[str, int]:
        return dict(self.replicas)

    def evaluate(self, now: float, sim: Simulator) -> tuple[dict[str, int], float | None]:
        return dict(self.replicas), None


def _pool(name: str) -> ModelPool:
    return ModelPool(name, "large", LARGE, 30.0, 2.5, 1.0, first_tokens=deque(), services=deque())


def test_spilled_requests_stay_demand_for_the_first_choice() -> None:
    # 20 requests a second for 30 s on one replica of "a" (32 slots, about 3.5 requests a
    # second): a queue that breaks the objective; "b" has room and is 0.05 worse.
    trace = [Request(i, 0.05 * i, "t", 0, 256, 256) for i in range(600)]
    routing = _Fixed(("a", "b"), {"a": 0.9, "b": 0.85})

    def run(spill: SpillPolicy | None) -> Simulator:
        sim = Simulator([_pool("a"), _pool("b")], trace, routing, _Hold({"a": 1, "b": 1}),
                        duration=120.0, alpha=0.7, spillover=spill)  # fmt: skip
        result = sim.run()
        sim.result = result  # type: ignore[attr-defined]
        return sim

    off, on = run(None), run(SpillPolicy(True, 0.1))
    r_off, r_on = off.result, on.result  # type: ignore[attr-defined]
    assert r_off.spilled == {} and {m for _, m, _, _ in r_off.served} == {"a"}
    assert r_on.spilled.get(("a", "b"), 0) > 0
    assert r_on.quality_lost == pytest.approx(0.05 * r_on.spilled[("a", "b")])
    assert r_on.slo_attainment > r_off.slo_attainment
    # Every request counts as routed to "a" either way: the autoscaler's demand.
    assert on._routed == off._routed == {"a": 600, "b": 0}
    # Until "a" has measured a request's service time, nothing spills (no evidence): the
    # queue forms before the first request finishes.
    first_done = min(t for t, _ in on.pools["a"].services)
    served_b = sorted(t for t, m, _, _ in r_on.served if m == "b")
    assert served_b and served_b[0] >= first_done


def test_the_bridge_taker_is_the_fastest_starting_model_within_the_allowance() -> None:
    trace = [Request(i, float(i), "t", 0, 256, 256) for i in range(5)]
    routing = _Fixed(("a", "b", "c"), {"a": 0.9, "b": 0.8, "c": 0.6})
    # c starts fastest but is 0.3 worse: within 0.4, not within 0.2.
    starts = {"a": 30.0, "b": 30.0, "c": 15.0}
    assert spill_takers(routing, trace, 0.7, 0.4, starts) == {"a": "c"}
    # b is within 0.2 but starts no faster than a: it bridges nothing.
    assert spill_takers(routing, trace, 0.7, 0.2, starts) == {}
    assert spill_takers(routing, trace, 0.7, 0.2, {**starts, "b": 20.0}) == {"a": "b"}


def spiky() -> Scenario:
    """Fifteen minutes: steady traffic; every topic jumps at once to 4x for three minutes."""

    def spike(rps: float) -> Bursts:
        return Bursts(rps, (300.0,), hold=180.0, ramp=1.0)

    return Scenario(
        name="spiky",
        description="test",
        spec=fleet_spec(),
        topics=(
            _topic("math", MATH, Sum((Constant(3.0), spike(9.0)))),
            _topic("code", CODE, Sum((Constant(4.0), spike(12.0)))),
            _topic("general", GENERAL, Sum((Constant(3.0), spike(9.0)))),
        ),
        duration=900.0,
    )


def test_the_bridge_sizes_the_spill_taker_and_keeps_more_requests_in_slo() -> None:
    spill = SpillPolicy(True, 0.4)
    on = run_study(spiky(), seed=0, spillover=spill).summary()
    bridged = run_study(
        spiky(), seed=0, spillover=spill, settings=PolicySettings(spill_bridge=1.0)
    ).summary()
    # mini-3b starts in 15 s, the 7B models in 30 s: it bridges every one of them.
    takers = {"code-7b": "mini-3b", "general-7b": "mini-3b", "math-7b": "mini-3b"}
    assert bridged["spillover"]["takers"] == takers
    assert bridged["spillover"]["bridge"] == 1.0 and on["spillover"]["takers"] is None
    peaks = bridged["policies"]["shoal"]["peak_replicas"]
    assert peaks["mini-3b"] > on["policies"]["shoal"]["peak_replicas"]["mini-3b"] == 1
    assert bridged["slo_attainment"] > on["slo_attainment"] + 0.03, (bridged, on)
    assert bridged["spilled_share"] > on["spilled_share"]
    # The bridge's replicas are of the cheap tier: the cost moves by little.
    assert bridged["cost_vs_optimal"] < on["cost_vs_optimal"] + 0.05


def test_without_spillover_the_bridge_setting_changes_nothing(
    runs: tuple[dict, dict],  # type: ignore[type-arg]
) -> None:
    plain = run_study(sharp(), seed=0, settings=PolicySettings(spill_bridge=1.0)).summary()
    off, _ = runs
    assert plain["slo_attainment"] == off["slo_attainment"]
    assert plain["cost_vs_optimal"] == off["cost_vs_optimal"]


def test_cli_passes_the_share_the_bridge_and_the_interval_to_the_study(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, object] = {}

    def fake(names, seeds, progress=None, spillover=None, settings=None, interval_seconds=None):  # type: ignore[no-untyped-def]
        seen.update(names=names, seeds=seeds, spillover=spillover, settings=settings)
        seen["interval"] = interval_seconds
        return {"scenarios": {}}

    monkeypatch.setattr(study, "run_many", fake)
    args = ["sim", "--study", "--seeds", "2", "--scenarios", "spike", "--spillover",
            "--max-quality-drop", "0.4", "--slo-share", "0.5", "--spill-bridge", "1",
            "--autoscaler-interval", "5", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"scenarios": {}}
    assert seen["names"] == ["spike"] and seen["seeds"] == [0, 1]
    assert seen["spillover"] == SpillPolicy(True, 0.4, 0.5)
    assert seen["settings"] == PolicySettings(spill_bridge=1.0)
    assert seen["interval"] == 5.0
    # Out of range: refused before anything runs.
    assert CliRunner().invoke(app, ["sim", "--spill-bridge", "-1"]).exit_code == 2
