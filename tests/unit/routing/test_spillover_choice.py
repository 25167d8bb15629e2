"""The spillover estimate and choice (shoal.routing.spillover), by hand-computed cases."""

from __future__ import annotations

import math

import pytest

from shoal.routing.spillover import (
    Load,
    SpillPolicy,
    choose,
    expected_first_token,
    expected_wait,
)

ON = SpillPolicy(enabled=True, max_quality_drop=0.1)
QUALITY = {"math": 0.86, "general": 0.80, "mini": 0.70, "code": 0.55}


def idle(slo: float = 1.0) -> Load:
    return Load(in_flight=0, slots=32, service_seconds=8.0, slo_seconds=slo)


def queued(queue: int, slots: int = 32, service: float = 8.0, slo: float = 1.0) -> Load:
    return Load(in_flight=slots + queue, slots=slots, service_seconds=service, slo_seconds=slo)


# -- the estimate ----------------------------------------------------------------------------


def test_no_wait_while_a_slot_is_free() -> None:
    assert expected_wait(Load(in_flight=31, slots=32, service_seconds=8.0, slo_seconds=1)) == 0
    assert expected_wait(Load(in_flight=0, slots=1, service_seconds=None, slo_seconds=1)) == 0


def test_a_full_model_waits_for_the_queue_ahead_to_drain() -> None:
    # 32 slots busy, none queued: the request waits for one slot's share, 8 s / 32.
    assert expected_wait(queued(0)) == pytest.approx(0.25)
    # 10 queued ahead: 11 requests' worth of 8 s spread over 32 slots.
    assert expected_wait(queued(10)) == pytest.approx(11 * 8.0 / 32)
    # Three replicas drain three times as fast.
    assert expected_wait(queued(30, slots=96)) == pytest.approx(31 * 8.0 / 96)


def test_fractional_in_flight_counts_whole_requests_ahead() -> None:
    # A scaled-up count (one ingress replica's count times the replicas) is not whole.
    load = Load(in_flight=33.6, slots=32, service_seconds=8.0, slo_seconds=1.0)
    assert expected_wait(load) == pytest.approx(2 * 8.0 / 32)


def test_no_ready_replica_is_an_unbounded_wait() -> None:
    assert expected_wait(Load(in_flight=0, slots=0, service_seconds=8.0, slo_seconds=1)) == (
        math.inf
    )


def test_a_queue_without_a_measured_service_time_is_unknown() -> None:
    assert expected_wait(queued(3, service=None)) is None  # type: ignore[arg-type]
    assert expected_first_token(queued(3, service=None)) is None  # type: ignore[arg-type]


def test_outside_models_never_wait() -> None:
    load = Load(in_flight=500, slots=0, service_seconds=None, slo_seconds=1, unbounded=True,
                first_token_seconds=0.6)  # fmt: skip
    assert expected_wait(load) == 0.0
    assert expected_first_token(load) == pytest.approx(0.6)


def test_first_token_adds_the_prefill() -> None:
    load = Load(in_flight=40, slots=32, service_seconds=8.0, slo_seconds=1.0,
                first_token_seconds=0.1)  # fmt: skip
    assert expected_first_token(load) == pytest.approx(9 * 8.0 / 32 + 0.1)


# -- the choice ------------------------------------------------------------------------------


def test_off_keeps_the_first_choice_whatever_its_queue() -> None:
    loads = {"math": queued(500), "general": idle()}
    choice = choose(["math", "general"], loads, QUALITY, SpillPolicy(enabled=False))
    assert choice.model == "math" and not choice.spilled
    assert choice.reason == "spillover off"


def test_a_first_choice_that_fits_keeps_its_request() -> None:
    loads = {"math": queued(2), "general": idle()}  # 3 * 8 / 32 = 0.75 s <= 1 s
    choice = choose(["math", "general"], loads, QUALITY, ON)
    assert choice.model == "math" and not choice.spilled
    assert choice.estimates["math"] == pytest.approx(0.75)


def test_the_objective_itself_fits_and_just_over_it_spills() -> None:
    at = {"math": queued(3), "general": idle()}  # 4 * 8 / 32 = 1.0 s: exactly the objective
    assert choose(["math", "general"], at, QUALITY, ON).model == "math"
    over = {"math": queued(4), "general": idle()}  # 1.25 s
    choice = choose(["math", "general"], over, QUALITY, ON)
    assert choice.model == "general" and choice.spilled and choice.first == "math"
    assert choice.quality_drop == pytest.approx(0.06)
    assert "math would answer in 1.25s" in choice.reason


def test_slo_share_keeps_a_margin() -> None:
    loads = {"math": queued(2), "general": idle()}  # 0.75 s
    margin = SpillPolicy(enabled=True, max_quality_drop=0.1, slo_share=0.5)
    assert choose(["math", "general"], loads, QUALITY, margin).model == "general"


def test_the_best_ranked_candidate_that_fits_wins() -> None:
    loads = {"math": queued(100), "general": queued(40), "mini": idle()}
    wide = SpillPolicy(enabled=True, max_quality_drop=0.2)
    choice = choose(["math", "general", "mini"], loads, QUALITY, wide)
    # general would wait 41 * 8 / 32 s: mini, further down the ranking, fits.
    assert choice.model == "mini"
    assert choice.quality_drop == pytest.approx(0.16)
    assert set(choice.estimates) == {"math", "general", "mini"}


def test_rank_order_not_quality_order_decides_among_fitting_candidates() -> None:
    # The router ranked mini above general (cost); both fit and both are within the drop.
    loads = {"math": queued(100), "general": idle(), "mini": idle()}
    wide = SpillPolicy(enabled=True, max_quality_drop=0.2)
    assert choose(["math", "mini", "general"], loads, QUALITY, wide).model == "mini"


def test_a_candidate_beyond_the_allowed_quality_drop_is_passed_over() -> None:
    loads = {"math": queued(100), "code": idle(), "mini": idle()}
    choice = choose(["math", "code", "mini"], loads, QUALITY, ON)  # 0.31 and 0.16 lower
    assert choice.model == "math" and not choice.spilled
    assert "quality 0.31 lower" in choice.reason and "quality 0.16 lower" in choice.reason


def test_the_drop_at_the_allowance_is_allowed() -> None:
    loads = {"math": queued(100), "mini": idle()}
    exact = SpillPolicy(enabled=True, max_quality_drop=0.16)
    assert choose(["math", "mini"], loads, QUALITY, exact).model == "mini"


def test_none_fits_keeps_the_first_choice() -> None:
    loads = {"math": queued(100), "general": queued(100)}
    choice = choose(["math", "general"], loads, QUALITY, ON)
    assert choice.model == "math" and not choice.spilled
    assert "no candidate fits" in choice.reason


def test_candidates_judged_by_their_own_tier_objective() -> None:
    # general's tier allows 2 s: a 1.5 s wait fits there, though not math's 1 s objective.
    loads = {"math": queued(100), "general": queued(5, slo=2.0)}  # 6 * 8 / 32 = 1.5 s
    assert choose(["math", "general"], loads, QUALITY, ON).model == "general"


def test_no_evidence_no_spill() -> None:
    # A first choice queueing with no service time measured yet: no estimate, no spill.
    loads = {"math": queued(10, service=None), "general": idle()}  # type: ignore[arg-type]
    assert choose(["math", "general"], loads, QUALITY, ON).model == "math"
    # A candidate in the same state is not spilled to either.
    loads = {"math": queued(100), "general": queued(10, service=None)}  # type: ignore[arg-type]
    assert choose(["math", "general"], loads, QUALITY, ON).model == "math"
    # A candidate whose load is unknown is not spilled to.
    assert choose(["math", "general"], {"math": queued(100)}, QUALITY, ON).model == "math"


def test_a_cold_first_choice_spills() -> None:
    loads = {"math": Load(0, 0, None, 1.0), "general": idle()}
    assert choose(["math", "general"], loads, QUALITY, ON).model == "general"


def test_a_cold_candidate_takes_nothing() -> None:
    loads = {"math": queued(100), "general": Load(0, 0, 8.0, 1.0)}
    assert choose(["math", "general"], loads, QUALITY, ON).model == "math"


def test_without_quality_tables_nothing_spills() -> None:
    loads = {"math": queued(100), "general": idle()}
    assert choose(["math", "general"], loads, None, ON).model == "math"
    assert choose(["math", "general"], loads, {"general": 0.8}, ON).model == "math"


def test_an_outside_model_fits_when_its_first_token_does() -> None:
    frontier = Load(0, 0, None, 1.0, first_token_seconds=0.6, unbounded=True)
    loads = {"math": queued(100), "frontier": frontier}
    quality = {**QUALITY, "frontier": 0.87}  # better, dearer: a negative drop
    choice = choose(["math", "frontier"], loads, quality, ON)
    assert choice.model == "frontier" and choice.quality_drop == 0.0


def test_one_candidate_and_no_candidates() -> None:
    assert choose(["math"], {"math": queued(100)}, QUALITY, ON).model == "math"
    with pytest.raises(ValueError):
        choose([], {}, QUALITY, ON)
