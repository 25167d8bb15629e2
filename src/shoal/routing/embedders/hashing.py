"""A dependency-free hashed bag-of-words embedder.

Deterministic, needs no model files, and costs microseconds: used by unit tests and as a
last-resort embedder. Tokens are lower-cased word and CJK-character unigrams plus word
bigrams, hashed (blake2b) into ``dim`` signed buckets with sublinear term frequency.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections import Counter

import numpy as np
import numpy.typing as npt

from shoal.routing.embedders.base import l2_normalise

_TOKEN = re.compile(r"[\u4e00-\u9fff]|[^\W_]+", re.UNICODE)


def hash_tokens(text: str) -> list[str]:
    """Word unigrams (CJK characters one by one) and adjacent-word bigrams."""
    words = _TOKEN.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


class HashingEmbedder:
    """Hashed bag of words. ``name`` is ``hash-<dim>``."""

    def __init__(self, dim: int = 256) -> None:
        if dim < 2:
            raise ValueError("dim must be >= 2")
        self.dim = dim
        self.name = f"hash-{dim}"

    def _bucket(self, token: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % self.dim, 1.0 if (h >> 63) & 1 else -1.0

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """L2-normalised hashed term-frequency vectors."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for token, count in Counter(hash_tokens(text)).items():
                j, sign = self._bucket(token)
                out[i, j] += sign * (1.0 + math.log(count))
        return l2_normalise(out)
