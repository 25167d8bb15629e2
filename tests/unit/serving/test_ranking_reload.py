"""The cluster ranker follows its artifact file: a new version is swapped in whole, a bad file
leaves the router in use. Plain Python; the swap under load on a real Ray Serve fleet is in
tests/integration/serving/test_router_refit_swap.py."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shoal.routing import fit_router, write_artifact
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.refit import Feedback, refit_artifact
from shoal.routing.types import Sample
from shoal.serving.ranking import ClusterRanker

NOW = datetime(2026, 12, 2, tzinfo=UTC)
MATH = ["integral", "matrix", "prime", "algebra", "vector", "theorem"]
LAW = ["contract", "tort", "statute", "court", "plaintiff", "appeal"]


def samples() -> list[Sample]:
    out = []
    for i in range(12):
        for words, best in ((MATH, "mathy"), (LAW, "wordy")):
            prompt = f"{words[i % 6]} {words[(i + 1) % 6]} case {i}"
            scores = {"mathy": 1.0 if best == "mathy" else 0.2,
                      "wordy": 1.0 if best == "wordy" else 0.1}  # fmt: skip
            out.append(Sample(prompt=prompt, scores=scores, task=best, origin=f"s:{i}"))
    return out


def fitted() -> bytes:
    return fit_router(samples(), embedder=HashingEmbedder(64), clusters=2, top_p=1, alpha=1.0)


def refit(blob: bytes) -> bytes:
    """Feedback that every cluster's answers of ``mathy`` were wrong and ``wordy``'s right."""
    fb = Feedback(np.full((2, 2), 500.0), np.array([[0.0, 500.0], [0.0, 500.0]]))
    out = refit_artifact(blob, fb, prior_weight=8, calibration=None, max_regression=1.0, now=NOW)
    assert out.artifact is not None
    return out.artifact


def test_a_new_version_is_swapped_in_and_a_bad_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "router.bin"
    blob = fitted()
    write_artifact(path, blob)
    ranker = ClusterRanker(str(path), ["mathy", "wordy"], None)
    assert ranker.version == 1
    first = ranker.rank("integral matrix prime")
    assert first.version == 1 and first.models[0] == "mathy"
    assert not ranker.reload()  # unchanged file: nothing to do

    embedder = ranker.router.embedder
    write_artifact(path, refit(blob))  # atomic replace, as Kubernetes swaps ConfigMap files
    assert ranker.reload()
    assert ranker.version == 2 and ranker.reloads == 1
    assert ranker.router.embedder is embedder  # a refit keeps the embedder: not reloaded
    after = ranker.rank("integral matrix prime")
    assert after.version == 2 and after.models[0] == "wordy"

    path.write_bytes(b"not an artifact")  # torn or corrupt: the router in use stays
    os.utime(path, ns=(1, 1))
    assert not ranker.reload()
    assert ranker.version == 2 and ranker.rank("tort").version == 2


def test_the_watch_loop_picks_a_new_version_up(tmp_path: Path) -> None:
    path = tmp_path / "router.bin"
    blob = fitted()
    write_artifact(path, blob)
    ranker = ClusterRanker(str(path), ["mathy", "wordy"], None)

    async def run() -> int:
        task = asyncio.create_task(ranker.watch(every=0.05))
        write_artifact(path, refit(blob))
        for _ in range(200):
            if ranker.version == 2:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        return ranker.version

    assert asyncio.run(run()) == 2
