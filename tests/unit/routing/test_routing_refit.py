"""The pure refit: posterior of calibration prior and feedback counts, refusal, versions."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from conftest import topic_samples
from shoal.routing import fit_router, load_router
from shoal.routing.artifact import artifact_checksum, decode_artifact
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.fit import score_matrices
from shoal.routing.refit import (
    NO_FEEDBACK,
    REFIT,
    WORSE,
    CalibrationSet,
    Feedback,
    posterior_quality,
    refit_artifact,
)
from shoal.routing.tables import TableRouter

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EMB = HashingEmbedder(64)


def fitted() -> tuple[bytes, CalibrationSet]:
    samples = topic_samples()
    blob = fit_router(samples, embedder=EMB, clusters=2, top_p=1, alpha=1.0, seed=0)
    q, _ = score_matrices(samples, ["mathy", "wordy"])
    cal = CalibrationSet(
        EMB.embed([s.prompt for s in samples]), q.astype(np.float64), tuple(s.task for s in samples)
    )
    return blob, cal


def test_posterior_blends_prior_and_counts() -> None:
    prior = np.array([[0.8, 0.2]])
    fb = Feedback(np.array([[0.0, 8.0]]), np.array([[0.0, 8.0]]))
    post = posterior_quality(prior, fb, prior_weight=8.0)
    # No feedback keeps the prior; 8 perfect events against 8 pseudo-events at 0.2 -> 0.6.
    assert post.tolist() == [[0.8, 0.6]]
    assert posterior_quality(prior, fb, prior_weight=0.0).tolist() == [[0.8, 1.0]]
    with pytest.raises(ValueError, match="prior_weight"):
        posterior_quality(prior, fb, prior_weight=-1)


def test_feedback_from_records_checks_names_and_ranges() -> None:
    fb = Feedback.from_records([(0, "a", 3, 2.5), (1, "b", 1, 0)], models=["a", "b"], clusters=2)
    assert fb.total == 4 and fb.score_sum[0, 0] == 2.5
    with pytest.raises(ValueError, match="model 'c'"):
        Feedback.from_records([(0, "c", 1, 1)], models=["a"], clusters=1)
    with pytest.raises(ValueError, match="cluster 5"):
        Feedback.from_records([(5, "a", 1, 1)], models=["a"], clusters=1)
    with pytest.raises(ValueError, match="score sum"):
        Feedback.from_records([(0, "a", 1, 2)], models=["a"], clusters=1)


def test_table_router_matches_the_request_path() -> None:
    blob, cal = fitted()
    router = load_router(blob, embedder=EMB)
    for alpha in (0.0, 0.5, 1.0):
        want = router.rank_embeddings(cal.vectors, alpha=alpha)[:, 0]
        assert (
            TableRouter.from_artifact(blob).choose(cal.vectors, alpha=alpha).tolist()
            == want.tolist()
        )


def test_accepted_refit_writes_a_new_version_that_loads() -> None:
    blob, cal = fitted()
    k = TableRouter.from_artifact(blob).clusters
    fb = Feedback.zeros(k, 2)
    fb.events[:, 1] = 4.0
    fb.score_sum[:, 1] = 4.0  # wordy answered well wherever it was asked
    out = refit_artifact(blob, fb, prior_weight=8, calibration=cal, max_regression=0.5, now=NOW)
    assert out.accepted and out.reason == REFIT and out.version == 2 and out.events == 4 * k
    assert out.artifact is not None and out.accuracy_before == 1.0
    header, arrays = decode_artifact(out.artifact)
    assert header["refit"]["parent"] == artifact_checksum(blob)
    assert header["refit"]["refit_at"] == "2026-12-01T12:00:00+00:00"
    np.testing.assert_allclose(arrays["prior_quality"], decode_artifact(blob)[1]["quality"])
    assert (arrays["quality"][:, 1] > arrays["prior_quality"][:, 1]).all()
    load_router(out.artifact, embedder=EMB)  # the request path reads it
    # A refit of the refit starts again from the calibration prior: same counts, same tables.
    again = refit_artifact(
        out.artifact, fb, prior_weight=8, calibration=cal, max_regression=0.5, now=NOW
    )
    assert again.version == 3 and again.artifact is not None
    np.testing.assert_allclose(decode_artifact(again.artifact)[1]["quality"], arrays["quality"])


def test_refit_that_hurts_the_calibration_set_is_refused_with_a_reason() -> None:
    blob, cal = fitted()
    k = TableRouter.from_artifact(blob).clusters
    fb = Feedback.zeros(k, 2)
    fb.events[:] = 100.0
    fb.score_sum[:, 0] = 0.0  # mathy "always wrong", wordy "always right": routes math badly
    fb.score_sum[:, 1] = 100.0
    out = refit_artifact(blob, fb, prior_weight=8, calibration=cal, max_regression=0.02, now=NOW)
    assert not out.accepted and out.reason == WORSE and out.artifact is None
    assert out.accuracy_after is not None and out.accuracy_after < 1.0
    assert "below the calibration fit's 100.00%" in out.message and "0.02" not in out.message
    assert out.version == 1


def test_no_feedback_and_mismatched_feedback_are_refused() -> None:
    blob, cal = fitted()
    k = TableRouter.from_artifact(blob).clusters
    none = refit_artifact(
        blob, Feedback.zeros(k, 2), prior_weight=8, calibration=cal, max_regression=0.01, now=NOW
    )
    assert not none.accepted and none.reason == NO_FEEDBACK
    other = refit_artifact(
        blob,
        Feedback.zeros(k + 3, 2),
        prior_weight=8,
        calibration=cal,
        max_regression=0.01,
        now=NOW,
    )
    assert not other.accepted and "another artifact" in other.message


def test_calibration_set_and_stored_feedback_follow_the_artifact() -> None:
    from shoal.routing import read_artifact_info
    from shoal.routing.refit import calibration_set, same_feedback, stored_feedback

    blob, cal = fitted()
    samples = topic_samples()
    built = calibration_set(samples, EMB, ["mathy", "wordy"])
    assert np.allclose(built.vectors, cal.vectors) and np.allclose(built.quality, cal.quality)
    with pytest.raises(ValueError, match="lack scores for nope"):
        calibration_set(samples, EMB, ["mathy", "nope"])
    assert stored_feedback(blob) is None
    info = read_artifact_info(blob)
    assert (info.version, info.refit_at) == (1, None)
    fb = Feedback.zeros(2, 2)
    fb.events[0, 0], fb.score_sum[0, 0] = 20.0, 19.0
    out = refit_artifact(
        blob, fb, prior_weight=8, calibration=None, max_regression=0.01, now=NOW, min_events=1
    )
    assert out.accepted and out.artifact is not None
    info = read_artifact_info(out.artifact)
    assert (info.version, info.refit_at) == (2, NOW)
    assert same_feedback(fb, stored_feedback(out.artifact))
    more = Feedback(fb.events + 1, fb.score_sum)
    assert not same_feedback(more, stored_feedback(out.artifact))
    assert not same_feedback(fb, None)


def centroid_router(quality: list[list[float]]) -> TableRouter:
    """Two clusters at two orthogonal centroids, two models, alpha 1 (quality only)."""
    return TableRouter(
        models=("mathy", "wordy"),
        centroids=np.eye(2, dtype=np.float32),
        quality=np.array(quality),
        cost=np.ones((2, 2)),
        top_p=1,
        temperature=0.1,
        alpha=1.0,
    )


def test_count_guard_adopts_a_switch_only_on_evidence() -> None:
    from shoal.routing.refit import count_guard

    prior = np.array([[0.6, 0.55], [0.1, 0.9]])
    in_use = centroid_router(prior.tolist())
    switched = centroid_router([[0.5, 0.55], [0.1, 0.9]])  # cluster 0 to wordy
    # Feedback only on mathy in cluster 0 (it scored 0.5): wordy's 0.55 is the prior alone.
    only_chosen = Feedback(np.array([[100.0, 0.0], [0.0, 100.0]]), np.array([[50.0, 0], [0, 90]]))
    g = count_guard(in_use, switched, prior, only_chosen, 8.0)
    assert not g.adopt and g.changed_clusters == 1 and g.changed_share == pytest.approx(0.5)
    assert g.lower < 0 < g.estimate  # the prior says a little better; the bound says unknown
    # Wordy scored in cluster 0 too, clearly better: adopted.
    both = Feedback(np.array([[100.0, 100.0], [0.0, 100.0]]), np.array([[50.0, 80], [0, 90]]))
    g = count_guard(in_use, switched, prior, both, 8.0)
    assert g.adopt and g.lower > 0 and g.events == 300
    assert not count_guard(in_use, switched, prior, both, 8.0, margin=0.5).adopt
    # No choice changes: the tables may move, the routing at the centroids cannot worsen.
    same = count_guard(in_use, in_use, prior, both, 8.0, margin=0.01)
    assert same.adopt and (same.estimate, same.changed_clusters) == (0.0, 0)
    assert same.as_status()["clustersChanged"] == 0


def test_a_refit_the_feedback_does_not_show_better_is_kept_in_shadow() -> None:
    from shoal.routing.refit import SHADOW

    blob, _ = fitted()
    k = TableRouter.from_artifact(blob).clusters
    fb = Feedback.zeros(k, 2)
    fb.events[:, 0] = 100.0  # only mathy scored, everywhere poorly: the mean moves to wordy
    fb.score_sum[:, 0] = 5.0
    plain = refit_artifact(
        blob, fb, prior_weight=8, calibration=None, max_regression=1.0, now=NOW, guard_margin=0.0
    )
    assert not plain.accepted and plain.reason == SHADOW and plain.artifact is None
    assert plain.shadow is not None and plain.guard is not None and not plain.guard.adopt
    assert "kept in shadow" in plain.message and plain.version == 1
    # Without the guard the same counts are adopted (as before the guard existed).
    unguarded = refit_artifact(
        blob, fb, prior_weight=8, calibration=None, max_regression=1.0, now=NOW
    )
    assert unguarded.accepted and unguarded.guard is None
    # A pessimistic refit stores the lower-bound-ranked table and says so in its header.
    out = refit_artifact(
        blob, fb, prior_weight=8, calibration=None, max_regression=1.0, now=NOW, pessimism=1.0
    )
    header, arrays = decode_artifact(out.artifact or b"")
    assert header["refit"]["pessimism"] == 1.0
    assert not np.allclose(arrays["quality"], posterior_quality(arrays["prior_quality"], fb, 8))


def test_count_guard_judges_a_cost_aware_router_by_its_own_objective() -> None:
    """At alpha 0.7 a switch to a model ten times cheaper and a little less accurate is
    what the router is asked to make once feedback shows the two nearly level: the guard
    counts the cost side of the blend and adopts it on evidence, though accuracy alone
    falls a little; at alpha 1 the router would not switch at all."""
    from dataclasses import replace

    from shoal.routing.refit import count_guard

    prior = np.array([[0.80, 0.40, 0.20], [0.1, 0.9, 0.2]])
    router = TableRouter(
        models=("big", "small", "other"),
        centroids=np.eye(3, dtype=np.float32)[:2],
        quality=prior,
        cost=np.array([[1.0, 0.1, 0.5], [1.0, 0.1, 0.5]]),
        top_p=1,
        temperature=0.1,
        alpha=0.7,
    )
    assert router.choose(router.centroids).tolist() == [0, 1]
    # Feedback: big is 0.62 and small 0.58 on cluster 0, both well measured.
    fb = Feedback(
        np.array([[400.0, 400.0, 0.0], [0.0, 100.0, 0.0]]),
        np.array([[248.0, 232.0, 0.0], [0.0, 90.0, 0.0]]),
    )
    refit = router.with_quality(posterior_quality(prior, fb, 8.0))
    assert refit.choose(refit.centroids).tolist() == [1, 1]  # the cheaper one now
    g = count_guard(router, refit, prior, fb, 8.0)
    assert g.adopt and g.lower > 0 and g.changed_clusters == 1
    assert posterior_quality(prior, fb, 8.0)[0, 1] < posterior_quality(prior, fb, 8.0)[0, 0]
    at_one = count_guard(replace(router, alpha=1.0), replace(refit, alpha=1.0), prior, fb, 8.0)
    assert at_one.changed_clusters == 0
