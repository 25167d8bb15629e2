"""The embedding cache: hits skip the embedder, keys depend on texts and embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shoal.routing.cache import cached_embed, texts_key
from shoal.routing.embedders.hashing import HashingEmbedder


class Counting(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(16)
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return super().embed(texts)


def test_second_call_reads_the_cache(tmp_path: Path) -> None:
    emb = Counting()
    first = cached_embed(emb, ["a b", "c d"], root=tmp_path)
    calls = emb.calls
    again = cached_embed(emb, ["a b", "c d"], root=tmp_path)
    assert emb.calls == calls
    np.testing.assert_array_equal(first, again)
    assert len(list((tmp_path / "embeddings").glob("hash-16-*.npy"))) == 1


def test_corrupt_cache_file_is_recomputed(tmp_path: Path) -> None:
    emb = Counting()
    cached_embed(emb, ["x"], root=tmp_path)
    (path,) = (tmp_path / "embeddings").glob("*.npy")
    path.write_bytes(b"garbage")
    calls = emb.calls
    out = cached_embed(emb, ["x"], root=tmp_path)
    assert emb.calls == calls + 1 and out.shape == (1, 16)


def test_progress_is_reported(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    cached_embed(HashingEmbedder(8), [f"t{i}" for i in range(70)], root=tmp_path,
                 progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen == [(64, 70), (70, 70)]


def test_keys_depend_on_order_embedder_and_boundaries() -> None:
    assert texts_key("e", ["a", "b"]) != texts_key("e", ["b", "a"])
    assert texts_key("e", ["ab", "c"]) != texts_key("e", ["a", "bc"])
    assert texts_key("e", ["a"]) != texts_key("f", ["a"])
