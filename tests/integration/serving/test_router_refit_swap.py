"""The serving half of the refit, for real: feedback with the official client's completion ids
moves the refit tables, and the ingress swaps to the refit artifact without a failed request.

Real: a local Ray Serve fleet (two ingress replicas sharing the fleet's completion-id key,
simulated engines), the OpenAI Python client, Prometheus scraping Ray's metrics, and the
operator's own reading of the counts (:class:`~shoal.operator.refit.PrometheusFeedback`,
:func:`~shoal.operator.refit.tally`) and the pure refit. The file the ingress loads is replaced
atomically, as Kubernetes replaces a mounted ConfigMap's files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.contract import BuildArgs
from shoal.devtools.testing.prometheus import fleet_pod, running_prometheus
from shoal.routing import fit_router, write_artifact
from shoal.routing.embedders.hashing import HashingEmbedder
from shoal.routing.types import Sample

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLEET = "refit"
EMB = HashingEmbedder(64)
MATH = ["integral", "matrix", "prime", "algebra", "vector", "theorem"]
LAW = ["contract", "tort", "statute", "court", "plaintiff", "appeal"]


def samples() -> list[Sample]:
    """Math prompts where ``alpha`` is right, law prompts where ``beta`` is."""
    out = []
    for i in range(12):
        for words, best in ((MATH, "alpha"), (LAW, "beta")):
            prompt = f"{words[i % 6]} {words[(i + 1) % 6]} case {i}"
            scores = {"alpha": 1.0 if best == "alpha" else 0.2,
                      "beta": 1.0 if best == "beta" else 0.1}  # fmt: skip
            out.append(Sample(prompt=prompt, scores=scores, task=best, origin=f"s:{i}"))
    return out


def prompts_of(blob: bytes) -> tuple[list[str], list[str]]:
    """Prompts the fitted router sends to alpha, and to beta (what the fit decided, read with
    the router itself, so the test does not depend on how k-means split the topics)."""
    from shoal.routing import load_router

    router = load_router(blob, embedder=EMB)
    texts = [
        f"{w[i % 6]} {w[(i + 3) % 6]} {w[(i + 1) % 6]}" for w in (MATH, LAW) for i in range(60)
    ]
    firsts = [router.rank(t).models[0] for t in texts]
    return ([t for t, m in zip(texts, firsts, strict=True) if m == "alpha"],
            [t for t, m in zip(texts, firsts, strict=True) if m == "beta"])  # fmt: skip


def fleet_args(artifact: Path) -> BuildArgs:
    model = {"engine": "simulated", "tier": "small", "minReplicas": 1, "maxReplicas": 1,
             "engineArgs": {"fixed_step_ms": 5, "output_tokens": 4}}  # fmt: skip
    return BuildArgs.parse(
        {
            "fleet_name": FLEET,
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "small", "costPerReplicaHour": "0.50"}],
                "models": [{"name": "alpha", **model}, {"name": "beta", **model}],
            },
            "policy": {"strategy": "cluster", "clusters": 2, "topP": 1, "alpha": "1",
                       "calibration": {"configMapRef": {"name": "cal", "key": "cal.jsonl"}}},
            "router_artifact_path": str(artifact),
            "ingress": {"num_replicas": 2, "num_cpus": 0.1},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    from ray import serve

    from shoal.serving.app import build_app

    path = tmp_path_factory.mktemp("router") / "router.bin"
    write_artifact(path, fit_router(samples(), embedder=EMB, clusters=2, top_p=1, alpha=1.0))
    serve.run(build_app(fleet_args(path)), name=FLEET, route_prefix="/")
    yield local_ray, path
    serve.delete(FLEET)


def ask(client: Any, prompt: str) -> tuple[str, str, str]:
    """(completion id, model that answered, router version) of one chat completion."""
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=4
    )
    chat = raw.parse()
    return chat.id, raw.headers["x-shoal-model"], raw.headers["x-shoal-router-version"]


async def load_during(
    base_url: str, prompts: list[str], swap: Any
) -> list[tuple[int, str | None, str | None]]:
    """Four callers sending ``prompts`` back to back while ``swap(results)`` runs."""
    results: list[tuple[int, str | None, str | None]] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:

        async def caller(n: int) -> None:
            i = 0
            while not done.is_set():
                i += 1
                body = {"model": "auto", "max_tokens": 4,
                        "messages": [{"role": "user", "content": prompts[(n + i) % len(prompts)]}]}  # fmt: skip
                try:
                    r = await http.post("/v1/chat/completions", json=body)
                    results.append((r.status_code, r.headers.get("x-shoal-model"),
                                    r.headers.get("x-shoal-router-version")))  # fmt: skip
                except httpx.HTTPError as exc:
                    results.append((0, None, repr(exc)))

        tasks = [asyncio.create_task(caller(n)) for n in range(4)]
        try:
            await swap(results)
        finally:
            done.set()
            await asyncio.gather(*tasks)
    return results


def test_feedback_moves_the_tables_and_the_ingress_swaps_without_a_failed_request(
    fleet: tuple[Any, Path], tmp_path: Path
) -> None:
    import openai

    from shoal.operator.refit import PrometheusFeedback, tally
    from shoal.routing import read_artifact_info
    from shoal.routing.refit import Feedback, calibration_set, refit_artifact

    ray, path = fleet
    client = openai.OpenAI(base_url=f"{ray.base_url}/v1", api_key="unused", max_retries=0)
    http = httpx.Client(base_url=ray.base_url, timeout=30)

    # Version 1 sends math to alpha and law to beta; every answer's id is signed.
    to_alpha, to_beta = prompts_of(path.read_bytes())
    assert len(to_alpha) >= 30 and len(to_beta) >= 20
    math = [ask(client, to_alpha[i % len(to_alpha)]) for i in range(60)]
    law = [ask(client, to_beta[i % len(to_beta)]) for i in range(20)]
    assert {(m, v) for _, m, v in math} == {("alpha", "1")}
    assert {(m, v) for _, m, v in law} == {("beta", "1")}

    # Clients say alpha's math answers were wrong and beta's law answers right. Two ingress
    # replicas share the fleet's key: whichever replica takes the feedback accepts it.
    for cid, _, _ in math:
        r = http.post("/v1/feedback", json={"id": cid, "score": 0})
        assert r.status_code == 200 and r.json()["model"] == "alpha", r.text
    for cid, _, _ in law:
        assert http.post("/v1/feedback", json={"id": cid, "score": 1}).status_code == 200

    # Every routed answer's id logs its decision: propensity 1 (no exploration), signed.
    assert all(c.startswith("chatcmpl-p10000-") for c, _, _ in math + law)
    # A forged id (the model swapped, the propensity lowered, or another key's signature) is
    # a 400 naming the field.
    cid = math[0][0]
    for forged in (
        cid.replace(".alpha.", ".beta."),
        cid.replace("-p10000-", "-p00001-"),
        cid[:-4] + ("AAAA" if cid[-4:] != "AAAA" else "BBBB"),
    ):
        r = http.post("/v1/feedback", json={"id": forged, "score": 1})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "id" and error["code"] == "invalid_completion_id"
        assert error["type"] == "invalid_request_error"

    # What the operator reads: Prometheus, scraping Ray's metrics, summed by model and cluster.
    pod = fleet_pod(f"127.0.0.1:{ray.metrics_port}", "default", FLEET)
    with running_prometheus([pod], tmp_path / "prometheus") as prom:
        source = PrometheusFeedback(prom.url)
        deadline = time.monotonic() + 90
        rows, logged = source.counts("default", [FLEET]), source.logged("default", [FLEET])
        while (
            sum(r.events for r in rows) < 80 or sum(r.events for r in logged) < 80
        ) and time.monotonic() < deadline:
            time.sleep(1.0)
            rows, logged = source.counts("default", [FLEET]), source.logged("default", [FLEET])
        source.close()
    # The logged sums: every answer in one split by its id; at propensity 1, r/p is r.
    assert sum(r.events for r in logged) == 80
    assert {r.split for r in logged} == {"fit", "heldout"}
    assert all(r.weighted == r.score and r.weighted_sq == r.score for r in logged)
    assert sum(r.score for r in logged if r.model == "beta") == 20
    blob = path.read_bytes()
    info = read_artifact_info(blob)
    t = tally(rows, info.models, info.clusters)
    feedback = Feedback.from_records(t.records, models=info.models, clusters=info.clusters)
    assert feedback.total == 80 and (t.unrouted, t.unranked, t.foreign) == (0, 0, [])
    out = refit_artifact(
        blob,
        feedback,
        prior_weight=8,
        calibration=calibration_set(samples(), EMB, info.models),
        max_regression=1.0,  # this test's clients contradict the calibration data on purpose
        now=datetime.now(UTC),
        min_events=50,
    )
    assert out.accepted and out.artifact is not None and out.version == 2
    assert out.accuracy_after is not None and out.accuracy_before is not None

    # The swap, under load: the refit artifact replaces the file while four callers run.
    async def swap(results: list[tuple[int, str | None, str | None]]) -> None:
        while len(results) < 40:
            await asyncio.sleep(0.05)
        assert out.artifact is not None
        write_artifact(path, out.artifact)
        swapped_at = len(results)
        deadline = time.monotonic() + 60
        # Done once 40 answers in a row came from version 2 (both replicas swapped).
        while time.monotonic() < deadline:
            tail = results[max(swapped_at, len(results) - 40) :]
            if len(tail) == 40 and all(v == "2" for _, _, v in tail):
                return
            await asyncio.sleep(0.1)

    results = asyncio.run(load_during(ray.base_url, to_alpha, swap))
    failed = [r for r in results if r[0] != 200]
    assert failed == [], f"{len(failed)} of {len(results)} requests failed during the swap"
    versions = [v for _, _, v in results]
    assert set(versions) == {"1", "2"} and versions[-40:] == ["2"] * 40
    # Version 2 believes the clients: math now goes to beta.
    assert {m for _, m, v in results[-40:]} == {"beta"}
    assert all(m == "alpha" for _, m, v in results if v == "1")
    models = http.get("/v1/models").json()["data"]
    assert next(e for e in models if e["id"] == "auto")["shoal"]["router_version"] == 2
    http.close()
