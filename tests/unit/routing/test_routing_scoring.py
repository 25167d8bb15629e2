"""Pure scoring functions: normalisation, the alpha blend, top-p softmax, ranking."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.routing import scoring


def test_minmax_rows_scales_each_row_to_unit_range() -> None:
    out = scoring.minmax_rows(np.array([[1.0, 3.0, 2.0], [10.0, 0.0, 5.0]]))
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]])
    assert out.dtype == np.float32


def test_minmax_rows_constant_row_is_zero_not_nan() -> None:
    out = scoring.minmax_rows(np.array([[0.4, 0.4], [0.0, 1.0]]))
    np.testing.assert_array_equal(out, [[0.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize(
    ("alpha", "expected"),
    [(1.0, [1.0, 0.0]), (0.0, [0.0, 1.0]), (0.5, [0.5, 0.5]), (0.7, [0.7, 0.3])],
)
def test_cluster_scores_blend_quality_and_cheapness(alpha: float, expected: list[float]) -> None:
    # model 0: best quality, most expensive; model 1: worst quality, cheapest
    q = np.array([[1.0, 0.0]])
    c = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(scoring.cluster_scores(q, c, alpha)[0], expected, rtol=1e-6)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        scoring.check_alpha(alpha)


def test_top_p_softmax_orders_by_similarity_and_weights_sum_to_one() -> None:
    sims = np.array([[0.1, 0.9, 0.5, 0.7]])
    idx, w = scoring.top_p_softmax(sims, 3, 0.1)
    assert idx.tolist() == [[1, 3, 2]]
    assert w.sum() == pytest.approx(1.0)
    assert w[0, 0] > w[0, 1] > w[0, 2]
    expected = np.exp(np.array([0.0, -0.2, -0.4]) / 0.1)
    np.testing.assert_allclose(w[0], expected / expected.sum(), rtol=1e-5)


def test_top_p_softmax_low_temperature_is_nearly_hard_and_p_is_capped() -> None:
    idx, w = scoring.top_p_softmax(np.array([[0.2, 0.8]]), 16, 1e-4)
    assert idx.tolist() == [[1, 0]]
    assert w[0, 0] == pytest.approx(1.0)


def test_top_p_softmax_rejects_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        scoring.top_p_softmax(np.zeros((1, 2)), 1, 0.0)


def test_blend_is_the_weighted_sum_of_cluster_rows() -> None:
    table = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = scoring.blend(np.array([[0, 1]]), np.array([[0.75, 0.25]], dtype=np.float32), table)
    np.testing.assert_allclose(out, [[0.75, 0.25]])


def test_rank_best_first_with_prior_breaking_ties() -> None:
    scores = np.array([[0.2, 0.9, 0.9, 0.1]])
    assert scoring.rank(scores).tolist() == [[1, 2, 0, 3]]
    assert scoring.rank(scores, prior=np.array([0, 0, 1, 0])).tolist() == [[2, 1, 0, 3]]


def test_rank_is_vectorised_over_rows() -> None:
    out = scoring.rank(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert out.tolist() == [[1, 0], [0, 1]]
