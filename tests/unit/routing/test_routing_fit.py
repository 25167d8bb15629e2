"""Fitting and routing end to end with the dependency-free hashing embedder."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from shoal.routing import (
    ArtifactError,
    CalibrationError,
    Decision,
    Sample,
    fit_router,
    load_router,
    make_embedder,
    read_artifact_info,
)
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.fit import cluster_tables, score_matrices
from shoal.routing.kmeans import spherical_kmeans

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def fit(samples: list[Sample], **kw: object) -> bytes:
    params: dict[str, object] = {
        "clusters": 2,
        "top_p": 1,
        "alpha": 1.0,
        "seed": 0,
        "fitted_at": WHEN,
    }
    params.update(kw)
    return fit_router(samples, embedder=HashingEmbedder(128), **params)  # type: ignore[arg-type]


def test_router_sends_each_topic_to_its_best_model(samples: list[Sample]) -> None:
    router = load_router(fit(samples), embedder=HashingEmbedder(128))
    assert router.models == ["mathy", "wordy"]
    assert router.rank("solve the equation for x and add the numbers").models == ["mathy", "wordy"]
    assert router.rank("court appeal ruling on the contract breach").models == ["wordy", "mathy"]


def test_alpha_zero_prefers_the_cheap_model(samples: list[Sample]) -> None:
    router = load_router(fit(samples), embedder=HashingEmbedder(128))
    assert router.rank("solve the equation for x", alpha=0.0).models[0] == "wordy"
    assert router.rank("solve the equation for x", alpha=1.0).models[0] == "mathy"


def test_decision_shape(samples: list[Sample]) -> None:
    router = load_router(fit(samples, alpha=0.7), embedder=HashingEmbedder(128))
    d = router.rank("multiply two integers")
    assert isinstance(d, Decision)
    assert sorted(d.models) == ["mathy", "wordy"]
    assert set(d.scores) == {"mathy", "wordy"}
    assert d.scores[d.models[0]] >= d.scores[d.models[1]]
    assert all(0.0 <= s <= 1.0 for s in d.scores.values())
    assert 0 <= d.cluster < 2 and d.elapsed_ms >= 0
    assert router.default_alpha == pytest.approx(0.7)


def test_rank_many_agrees_with_rank(samples: list[Sample]) -> None:
    router = load_router(fit(samples, top_p=2), embedder=HashingEmbedder(128))
    texts = ["add the numbers", "tort liability claim", "something else entirely"]
    many = router.rank_many(texts, alpha=0.5)
    for text, d in zip(texts, many, strict=True):
        one = router.rank(text, alpha=0.5)
        assert (one.models, one.cluster) == (d.models, d.cluster)
        assert one.scores == pytest.approx(d.scores)
    assert router.rank_many([]) == []


def test_a_decision_carries_its_similarities_and_reranks_from_them(samples: list[Sample]) -> None:
    router = load_router(fit(samples, top_p=2), embedder=HashingEmbedder(128))
    for text in ("add the numbers", "tort liability claim", "something else entirely"):
        d = router.rank(text, alpha=0.5)
        assert len(d.similarity) == 2 and d.cluster == max(range(2), key=d.similarity.__getitem__)
        for alpha in (0.0, 0.5, 1.0):
            assert (
                router.rank_similarity(d.similarity, alpha=alpha)
                == router.rank(text, alpha=alpha).models
            )
    with pytest.raises(ValueError, match="3 similarities for a router of 2 clusters"):
        router.rank_similarity((0.1, 0.2, 0.3), alpha=0.5)


def test_fit_is_deterministic_for_a_seed(samples: list[Sample]) -> None:
    assert fit(samples, clusters=3, seed=7) == fit(samples, clusters=3, seed=7)


def test_artifact_header_describes_the_fit(samples: list[Sample]) -> None:
    info = read_artifact_info(fit(samples, clusters=3, top_p=2, temperature=0.2, alpha=0.4))
    assert info.models == ["mathy", "wordy"] and info.samples == len(samples)
    assert info.clusters == 3 and info.embedder == "hash-128" and info.fitted_at == WHEN
    assert info.params["top_p"] == 2 and info.params["alpha"] == pytest.approx(0.4)


def test_64_clusters_by_32_models_fit_well_under_200_kb() -> None:
    rng = np.random.default_rng(0)
    models = [f"model-{j}" for j in range(32)]
    samples = [
        Sample(
            prompt=f"p{i}",
            scores={m: float(rng.random()) for m in models},
            costs={m: float(rng.random()) / 100 for m in models},
        )
        for i in range(640)
    ]
    emb = FixedEmbedder(rng.standard_normal((640, 384)).astype(np.float32))
    data = fit_router(samples, embedder=emb, clusters=64, embeddings=emb.vectors)
    info = read_artifact_info(data)
    assert info.clusters == 64 and len(info.models) == 32
    assert len(data) < 200 * 1024
    router = load_router(data, embedder=emb)
    assert len(router.rank_many(["p0", "p1"])) == 2


class FixedEmbedder:
    """Returns pre-computed vectors in order (for fits that pass ``embeddings``)."""

    name = "fixed-384"
    dim = 384

    def __init__(self, vectors: np.ndarray) -> None:
        n = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = (vectors / n).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.vectors[[int(t[1:]) for t in texts]]


def test_loading_with_another_embedder_is_refused(samples: list[Sample]) -> None:
    with pytest.raises(ArtifactError, match="fitted with embedder 'hash-128'"):
        load_router(fit(samples), embedder=HashingEmbedder(64))


def test_load_router_builds_the_named_embedder(samples: list[Sample], tmp_path: object) -> None:
    router = load_router(fit(samples))
    assert router.embedder.name == "hash-128"


def test_load_router_reads_a_file(samples: list[Sample], tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "r.bin"
    path.write_bytes(fit(samples))
    assert load_router(path).models == ["mathy", "wordy"]
    assert load_router(str(path)).models == ["mathy", "wordy"]
    with pytest.raises(ArtifactError, match="cannot read router artifact"):
        load_router(path.with_name("missing.bin"))


def test_bad_alpha_per_request_is_refused(samples: list[Sample]) -> None:
    router = load_router(fit(samples), embedder=HashingEmbedder(128))
    with pytest.raises(ValueError, match="alpha"):
        router.rank("x", alpha=2.0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"clusters": 0}, "clusters"),
        ({"top_p": 0}, "top_p"),
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.2}, "alpha"),
        ({"shrinkage": -1.0}, "shrinkage"),
    ],
)
def test_bad_parameters_are_refused(
    samples: list[Sample], kw: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit(samples, **kw)


def test_empty_and_inconsistent_samples_are_refused(samples: list[Sample]) -> None:
    with pytest.raises(CalibrationError, match="no calibration samples"):
        fit([])
    odd = Sample(prompt="x", scores={"mathy": 1.0, "other": 0.0}, origin="f.jsonl:9")
    with pytest.raises(CalibrationError, match="row 9: model set differs"):
        fit([*samples, odd])


def test_precomputed_embeddings_must_match(samples: list[Sample]) -> None:
    with pytest.raises(ValueError, match="embeddings have shape"):
        fit(samples, embeddings=np.zeros((3, 128), dtype=np.float32))


def test_clusters_are_capped_by_distinct_points() -> None:
    same = [Sample(prompt="same text", scores={"a": 1.0, "b": 0.0}) for _ in range(5)]
    info = read_artifact_info(fit(same, clusters=4, top_p=3))
    assert info.clusters == 1 and info.params["top_p"] == 1


# --- pure pieces ---------------------------------------------------------------------------


def test_score_matrices_follow_model_order(samples: list[Sample]) -> None:
    q, c = score_matrices(samples[:2], ["wordy", "mathy"])
    assert q.tolist() == [[pytest.approx(0.1), 1.0], [1.0, pytest.approx(0.2)]]
    assert c[0].tolist() == [pytest.approx(0.001), pytest.approx(0.01)]
    q, c = score_matrices([Sample(prompt="x", scores={"a": 0.5})], ["a"])
    assert c.tolist() == [[0.0]]


def test_cluster_tables_shrink_small_clusters_toward_the_global_mean() -> None:
    labels = np.array([0, 0, 0, 0, 1])
    quality = np.array([[1.0], [1.0], [1.0], [1.0], [0.0]])
    t = cluster_tables(labels, 3, quality, np.zeros_like(quality), shrinkage=2.0)
    g = 0.8
    assert t.quality[0, 0] == pytest.approx((4 + 2 * g) / 6)
    assert t.quality[1, 0] == pytest.approx((0 + 2 * g) / 3)
    assert t.quality[2, 0] == pytest.approx(g)  # empty cluster: the global mean
    assert t.counts.tolist() == [4, 1, 0]
    raw = cluster_tables(labels, 2, quality, np.zeros_like(quality), shrinkage=0.0)
    assert raw.quality[:, 0].tolist() == [1.0, 0.0]


def test_spherical_kmeans_separates_blobs_deterministically() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal([5, 0, 0], 0.1, (30, 3))
    b = rng.normal([0, 5, 0], 0.1, (30, 3))
    x = np.vstack([a, b])
    c1, l1 = spherical_kmeans(x, 2, seed=3)
    c2, l2 = spherical_kmeans(x, 2, seed=3)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(l1, l2)
    assert len(set(l1[:30])) == 1 and len(set(l1[30:])) == 1 and l1[0] != l1[-1]
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1.0, rtol=1e-5)


def test_spherical_kmeans_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one point"):
        spherical_kmeans(np.zeros((0, 3)), 2)
    with pytest.raises(ValueError, match="k must be"):
        spherical_kmeans(np.ones((3, 3)), 0)


def test_make_embedder_hash() -> None:
    emb = make_embedder("hash-32")
    assert (emb.name, emb.dim) == ("hash-32", 32)
