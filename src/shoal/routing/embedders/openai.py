"""Any OpenAI-compatible ``/v1/embeddings`` endpoint as an embedder.

Lets a fleet serve its own embedding model. The vectors are re-normalised here; the
dimension is learned from the first response unless given. ``name`` is
``openai:<model>`` so an artifact fitted against one endpoint model refuses another.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from shoal.routing.embedders.base import EmbedderUnavailable, l2_normalise


class OpenAIEmbedder:
    """Embeds through ``POST {base_url}/embeddings`` (``base_url`` ends in ``/v1``)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        dim: int | None = None,
        timeout_s: float = 10.0,
        batch_size: int = 64,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = f"openai:{model}"
        self.model = model
        url = base_url.rstrip("/")
        self.url = url + "/embeddings" if url.endswith("/v1") else url + "/v1/embeddings"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout_s, headers=headers)
        self.batch_size = batch_size
        self._dim = dim

    @property
    def dim(self) -> int:
        """Vector dimension (asks the endpoint once if it was not given)."""
        if self._dim is None:
            self._dim = int(self._request(["dimension probe"]).shape[1])
        return self._dim

    def _request(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """One POST; :class:`EmbedderUnavailable` (a ``RuntimeError``) when the endpoint cannot
        be reached or answers anything but 200 with one vector per text."""
        try:
            resp = self._client.post(self.url, json={"model": self.model, "input": texts})
        except httpx.HTTPError as exc:
            raise EmbedderUnavailable(f"embeddings endpoint {self.url}: {exc}") from exc
        if resp.status_code != 200:
            # The status only: the body is the remote's, and this message reaches the
            # policy's status and events.
            raise EmbedderUnavailable(f"embeddings endpoint {self.url} answered {resp.status_code}")
        try:
            body: Any = resp.json()
            rows = sorted(body["data"], key=lambda d: d.get("index", 0))
            if len(rows) != len(texts):
                raise EmbedderUnavailable(
                    f"embeddings endpoint returned {len(rows)} vectors for {len(texts)}"
                )
            return np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EmbedderUnavailable(
                f"embeddings endpoint {self.url} answered something that is not an OpenAI "
                "embeddings response"
            ) from exc

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """L2-normalised vectors from the endpoint, in batches."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._request(list(texts[i : i + self.batch_size]))
            for i in range(0, len(texts), self.batch_size)
        ]
        out = np.concatenate(parts)
        if self._dim is None:
            self._dim = int(out.shape[1])
        elif out.shape[1] != self._dim:
            raise RuntimeError(
                f"embeddings endpoint returned dim {out.shape[1]}, expected {self._dim}"
            )
        return l2_normalise(out)
