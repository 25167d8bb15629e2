"""A RouterBench cascade plan served by the endpoint decides as the offline replay does.

The plan is fitted on RouterBench's train split (``verifier+agreement``: routed clusters,
voters, the verifier with its ex-ante estimate) and put in a router artifact; the fleet's
endpoint (:class:`shoal.serving.ingress.Endpoint`, in process) serves it over one fake engine
per RouterBench model (named as a fake: each answers a prompt with that model's *recorded*
RouterBench answer, so no model runs). For every test query, the model whose answer the endpoint
returns and whether it escalated must be exactly the offline replay's
(:func:`shoal.routing.cascade_fit.apply`): the similarities, the routed choice, the voters'
answers and the verifier's score travel through the serving path as the fit computed them.
Slow (the default embedder, like test_routing_cascade.py); reads ``$SHOAL_DATA_DIR/routing``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_routing_public_data import RB_PARAMS, embedder, split

from shoal.contract import BuildArgs
from shoal.routing import Sample, fit_router, load_router
from shoal.routing import cascade_fit as cf
from shoal.serving.clients import LocalModelClient, ModelInfo
from shoal.serving.engines.base import Chunk, EngineLoad, GenerationRequest
from shoal.serving.ingress import Endpoint
from shoal.serving.metrics import RouterMetrics

pytestmark = pytest.mark.slow
pytest.importorskip("starlette", reason="starlette (ray[serve]) not installed")

GPT4 = "gpt-4-1106-preview"
COST_WEIGHT = 0.06


def fleet_name(model: str) -> str:
    """A RouterBench model's name as a fleet may spell it (``mistralai/mixtral-8x7b-chat``
    -> ``mistralai-mixtral-8x7b-chat``)."""
    return re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")


def renamed(samples: list[Sample]) -> list[Sample]:
    def names(d: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if d is None else {fleet_name(k): v for k, v in d.items()}

    return [
        dataclasses.replace(
            s, scores=names(s.scores), costs=names(s.costs), answers=names(s.answers)
        )
        for s in samples
    ]


class RecordedAnswers:
    """A fake engine: answers each prompt with one model's recorded RouterBench answer."""

    def __init__(self, model: str, answers: dict[str, str]) -> None:
        self.model = model
        self.answers = answers
        self.calls = 0

    async def start(self) -> None:
        return None

    async def check_health(self) -> None:
        return None

    def load(self) -> EngineLoad:
        return EngineLoad(0, 0)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        prompt = str((request.messages or [{}])[-1].get("content"))
        await asyncio.sleep(0)
        yield Chunk(self.answers[prompt], "stop", 10, 10)


def test_the_served_plan_decides_as_the_offline_replay(tmp_path: Path) -> None:
    train, x_train = split("routerbench", "train")
    test, x_test = split("routerbench", "test")
    train, test = renamed(train), renamed(test)
    blob = fit_router(train, embedder=embedder(), embeddings=x_train, **RB_PARAMS)
    router = load_router(blob, embedder=embedder())
    models = list(router.models)
    tables = cf.RouterTables(router.quality, router.cost, router.top_p, router.temperature)
    tr = cf.signals(train, models, x_train, router.centroids, router=tables)
    kinds = cf.cluster_kinds(tr.tasks, tr.cluster, router.centroids.shape[0])
    te = cf.signals(test, models, x_test, router.centroids, kinds=kinds, router=tables)
    ref = models.index(fleet_name(GPT4))
    fitted = cf.fit_signal("verifier+agreement", tr, te, reference=ref)
    choice = cf.choose(fitted, tr, COST_WEIGHT, reference=ref)
    plan = cf.plan_from(choice, fitted, tr, cost_weight=COST_WEIGHT, fitted_on="routerbench")
    offline = cf.apply(choice, fitted, te)
    assert any(c.routed for c in plan.chains) and any(c.voters for c in plan.chains)
    path = tmp_path / "router.bin"
    path.write_bytes(cf.with_cascade(blob, plan))

    args = BuildArgs.parse({
        "fleet_name": "rb",
        "fleet": {
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "all", "costPerReplicaHour": "1"}],
            "models": [{"name": m, "engine": "simulated", "tier": "all"} for m in models],
        },
        "policy": {
            "strategy": "cluster", "clusters": 16, "topP": 3, "alpha": "1",
            "calibration": {"configMapRef": {"name": "c", "key": "k"}},
            "cascade": {"threshold": "-1", "maxChain": 2},
        },
        "router_artifact_path": str(path),
    })  # fmt: skip
    engines = {
        m: RecordedAnswers(m, {s.prompt: (s.answers or {})[m] for s in test}) for m in models
    }
    clients = {
        m: LocalModelClient(ModelInfo(m, "all", "simulated", 1.0), engines[m]) for m in models
    }
    ep = Endpoint(args, clients, RouterMetrics("rb", backend="prometheus"))  # type: ignore[arg-type]

    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    app = Starlette(routes=[Route("/{path:path}", ep.handle, methods=["GET", "POST"])])
    rows = range(len(test))  # all 953 test queries, about 15 s in process
    seen = {"escalated": 0, "routed": 0, "voted": 0}
    with TestClient(app) as tc:
        for i in rows:
            raw = tc.post("/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": test[i].prompt}],
            })  # fmt: skip
            assert raw.status_code == 200, raw.text
            want = models[int(offline.answered_by[i])]
            assert int(raw.headers["x-shoal-cluster"]) == int(te.cluster[i])
            assert (raw.headers["x-shoal-model"], raw.headers["x-shoal-cascade-escalated"]) == (
                want,
                "true" if offline.escalated[i] else "false",
            ), (i, test[i].task, raw.headers.get("x-shoal-cascade-confidence"))
            chain = plan.chains[int(te.cluster[i])]
            seen["escalated"] += bool(offline.escalated[i])
            seen["routed"] += chain.routed
            seen["voted"] += "x-shoal-cascade-voters" in raw.headers
    # The sample covers each kind of decision.
    assert all(v > 0 for v in seen.values()), seen
    assert int(np.sum([e.calls for e in engines.values()])) >= len(rows) + seen["escalated"]
