"""What one refit costs: the operator's refit and check, and the ingress's swap to the new file.

A router of 64 clusters x 32 models over 384-dimension embeddings, fitted on 2,000 synthetic
calibration prompts (random unit vectors and scores; the sizes are what matter here), gets
50,000 feedback events. Timed, median of ``--repeat`` runs:

- ``refit_ms``: :func:`shoal.routing.refit.refit_artifact` with the calibration-set check
  (what the operator does per policy per refit interval, the calibration set already
  embedded: the operator embeds it once per calibration fit);
- ``reload_ms``: :meth:`shoal.serving.ranking.ClusterRanker.reload` after the file changed
  (read, decode and build the new router, off the ingress's event loop; the swap itself is
  one assignment);
- ``artifact_bytes``: the refit artifact's size (the ConfigMap holds it base64-encoded, and
  a ConfigMap holds at most 1 MiB).

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shoal.routing import fit_router, write_artifact
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.refit import CalibrationSet, Feedback, refit_artifact
from shoal.routing.types import Sample
from shoal.serving.ranking import ClusterRanker

K, M, D, N, EVENTS = 64, 32, 384, 2000, 50_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    models = [f"m{j}" for j in range(M)]
    vectors = rng.normal(size=(N, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    quality = rng.uniform(size=(N, M))
    tasks = [f"t{i % 8}" for i in range(N)]
    samples = [
        Sample(prompt=f"p{i}", scores=dict(zip(models, map(float, quality[i]), strict=True)),
               task=tasks[i], origin=f"s:{i}")
        for i in range(N)
    ]  # fmt: skip
    embedder = HashingEmbedder(D)
    blob = fit_router(samples, embedder=embedder, clusters=K, top_p=3, embeddings=vectors)
    cal = CalibrationSet(vectors, quality, tuple(tasks))
    events = rng.multinomial(EVENTS, np.full(K * M, 1.0 / (K * M))).reshape(K, M).astype(float)
    feedback = Feedback(events, events * rng.uniform(size=(K, M)))
    now = datetime.now(UTC)

    refit_s, reload_s = [], []
    out = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "router.bin"
        for _ in range(args.repeat):
            started = time.perf_counter()
            out = refit_artifact(
                blob, feedback, prior_weight=8, calibration=cal, max_regression=1.0, now=now
            )
            refit_s.append(time.perf_counter() - started)
            assert out.artifact is not None
            write_artifact(path, blob)
            ranker = ClusterRanker(str(path), models, None)
            write_artifact(path, out.artifact)
            started = time.perf_counter()
            assert ranker.reload()
            reload_s.append(time.perf_counter() - started)
    assert out is not None and out.artifact is not None
    result = {
        "clusters": K,
        "models": M,
        "dim": D,
        "calibration_samples": N,
        "feedback_events": EVENTS,
        "refit_ms": round(1000 * statistics.median(refit_s), 2),
        "reload_ms": round(1000 * statistics.median(reload_s), 2),
        "artifact_bytes": len(out.artifact),
        "configmap_bytes": len(out.artifact) * 4 // 3,
    }
    print(f"refit {result['refit_ms']} ms, ingress reload {result['reload_ms']} ms, "
          f"artifact {result['artifact_bytes']} bytes")  # fmt: skip
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
