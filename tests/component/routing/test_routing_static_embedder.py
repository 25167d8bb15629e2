"""The default fast-path embedder (static vectors distilled from the ONNX MiniLM).

Slow on a cold cache: the table is distilled from the installed ONNX file on first use
(about two minutes on two cores) and cached under ``$SHOAL_CACHE_DIR``.
"""

from __future__ import annotations

import numpy as np
import pytest

from shoal.devtools.testing import require
from shoal.routing import EmbedderUnavailable, make_embedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def static() -> object:
    try:
        return make_embedder("minilm-l6-static-v2")
    except EmbedderUnavailable as exc:
        require(False, f"ONNX MiniLM not installed ({exc}); run hack/setup.sh")
        raise


def test_static_embeddings_are_normalised_and_semantic(static: object) -> None:
    out = static.embed(  # type: ignore[attr-defined]
        ["How do I bake bread at home?", "a recipe for baking a loaf of bread",
         "The supreme court ruled on the appeal.", ""]
    )  # fmt: skip
    assert out.shape == (4, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:3], axis=1), 1.0, rtol=1e-5)
    assert not out[3].any()  # no tokens, no direction
    assert out[0] @ out[1] > out[0] @ out[2] + 0.05  # measured 0.43 vs 0.34


def test_static_batch_equals_single(static: object) -> None:
    texts = ["short one", "法院驳回了上诉", "def f(x):\n    return x * 2\n" * 40, "!!!"]
    batch = static.embed(texts)  # type: ignore[attr-defined]
    single = np.vstack([static.embed([t]) for t in texts])  # type: ignore[attr-defined]
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_static_tracks_the_transformer(static: object) -> None:
    """The distilled space keeps the ONNX model's neighbourhoods on related prompts."""
    onnx = make_embedder("minilm-l6-int8")
    texts = ["integrate x squared", "derivative of sin x", "capital city of France",
             "largest river in Europe", "write a python function to sort a list",
             "reverse a linked list in java"]  # fmt: skip
    s, o = static.embed(texts), onnx.embed(texts)  # type: ignore[attr-defined]
    # each text's nearest other text is the same in both spaces
    for sims in (s @ s.T, o @ o.T):
        np.fill_diagonal(sims, -1)
    ns = (s @ s.T - 2 * np.eye(6)).argmax(axis=1)
    no = (o @ o.T - 2 * np.eye(6)).argmax(axis=1)
    assert (ns == no).mean() >= 0.65, (ns, no)
