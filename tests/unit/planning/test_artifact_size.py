"""A router artifact for 64 clusters x 32 models fits its ConfigMap with room to spare."""

from __future__ import annotations

import json

import numpy as np

from shoal.api.v1alpha1 import ModelFleet
from shoal.planning.children import RouterArtifact, desired_router_configmap
from shoal.routing import Sample, artifact_checksum, fit_router
from shoal.routing.embedders.hashing import HashingEmbedder

CONFIGMAP_LIMIT = 1024 * 1024  # etcd's object limit, base64 and all


def test_64_clusters_by_32_models_stays_far_below_the_object_limit() -> None:
    rng = np.random.default_rng(0)
    models = [f"m{i:02d}" for i in range(32)]
    samples = [
        Sample(prompt=f"q{i}", scores={m: float(rng.random() > 0.5) for m in models},
               costs={m: float(rng.random()) for m in models})
        for i in range(2000)
    ]  # fmt: skip
    dim = 384  # MiniLM's
    embeddings = rng.normal(size=(len(samples), dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    data = fit_router(samples, embedder=HashingEmbedder(dim), clusters=64, embeddings=embeddings)
    fleet = ModelFleet.model_validate({
        "metadata": {"name": "f", "namespace": "ns", "uid": "u"},
        "spec": {"routingPolicyRef": {"name": "p"},
                 "tiers": [{"name": "t", "costPerReplicaHour": "1"}],
                 "models": [{"name": m, "engine": "simulated", "tier": "t"} for m in models]},
    })  # fmt: skip
    cm = desired_router_configmap(fleet, RouterArtifact(artifact_checksum(data), data))
    size = len(json.dumps(cm))
    assert size < CONFIGMAP_LIMIT / 3, f"{size} bytes"
