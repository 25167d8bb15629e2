"""An on-disk cache of embeddings, so refits and evaluations of the same data are fast.

Keyed by the embedder's name and a sha256 over the texts; stored as ``.npy`` files under
``$SHOAL_CACHE_DIR/embeddings`` (default ``~/.cache/shoal/embeddings``), outside the
repository. Writes are atomic; a corrupt or mismatched file is recomputed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shoal.routing.fit import embed_all
from shoal.routing.types import Embedder


def cache_root() -> Path:
    """``$SHOAL_CACHE_DIR`` or ``~/.cache/shoal``."""
    env = os.environ.get("SHOAL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "shoal"


def texts_key(embedder_name: str, texts: Sequence[str]) -> str:
    """A stable key for one embedder over one ordered list of texts."""
    h = hashlib.sha256(embedder_name.encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:24]


def cached_embed(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """Embeddings of ``texts``, from the cache when present, else computed and stored."""
    folder = (root or cache_root()) / "embeddings"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder.name)
    path = folder / f"{safe}-{texts_key(embedder.name, texts)}.npy"
    if path.is_file():
        try:
            cached = np.load(path)
            if cached.shape == (len(texts), embedder.dim):
                out: npt.NDArray[np.float32] = cached.astype(np.float32)
                return out
        except (OSError, ValueError):
            pass
    vectors = embed_all(embedder, texts, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=folder)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, vectors)
    os.replace(tmp, path)
    return vectors
