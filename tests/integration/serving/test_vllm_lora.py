"""A LoRA adapter the project generates, served by vLLM's CPU build from a local S3 store,
through the fleet.

The adapter (:func:`shoal.serving.tinyhf.write_tiny_lora`, PEFT format, for the project's
tiny Hugging Face Llama) is uploaded to moto's S3 server, started here on loopback with
credentials made up for the run (:mod:`shoal.devtools.testing.s3`). The fleet names the
store as a cluster would name MinIO (``loraStore``: folder, endpoint, region, a Secret's
credentials file); the app is built as the operator renders it, so Ray Serve LLM's own
downloader (boto3) fetches the adapter inside the replica, told the endpoint and the path of
the credentials file by the replica's environment, never the key.

Checked through the fleet's endpoint: the adapter answers by its name, ``tiny:tiny-lora``,
with greedy tokens that differ from the base model's; the router (a static order that puts
the adapter first) routes ``model: "auto"`` to it; neither key appears in Ray's logs or the
metrics. Tokens per second with and without the adapter: ``bench/bench_lora.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_fleet import TINY_MAX_MODEL_LEN, VllmFleet, deploy, offline_hub, require_vllm

from shoal.contract import BuildArgs
from shoal.contract.lora import LORA_CREDENTIALS_DIR_ENV
from shoal.devtools.testing import require

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["offline_hub"]  # a fixture this module uses

ADAPTER = "tiny-lora"
NAMED = f"tiny:{ADAPTER}"
STORE_URI = "s3://adapters/tiny"
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 times 7?",
    'def add(a, b):\n    return a + b\n\n{"answer": ',
]


@pytest.fixture(scope="module")
def store() -> Iterator[Any]:
    import importlib.util

    missing = [m for m in ("moto", "boto3", "flask") if importlib.util.find_spec(m) is None]
    require(not missing, f"S3 test server not installed ({', '.join(missing)}): the dev extra")
    from shoal.devtools.testing.s3 import local_s3

    with local_s3() as s3:
        yield s3


@pytest.fixture(scope="module")
def fleet(
    offline_hub: None,
    store: Any,
    local_ray: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VllmFleet]:
    require_vllm()
    from shoal.devtools.testing.s3 import upload_folder
    from shoal.serving.tinyhf import (
        TinyHFModelSpec,
        TinyLoraSpec,
        ensure_tiny_hf_model,
        write_tiny_lora,
    )

    spec = TinyHFModelSpec(max_position_embeddings=TINY_MAX_MODEL_LEN)
    model = ensure_tiny_hf_model(spec)
    tmp = tmp_path_factory.mktemp("lora")
    adapter = write_tiny_lora(model, tmp / ADAPTER, TinyLoraSpec(name=ADAPTER), spec)
    keys = upload_folder(store, adapter, f"{STORE_URI}/{ADAPTER}")
    assert f"tiny/{ADAPTER}/adapter_config.json" in keys
    # Where the operator would mount the Secret: <dir>/<model>, an AWS credentials file.
    creds = tmp / "credentials"
    store.credentials_file(creds / "tiny")
    saved = os.environ.get(LORA_CREDENTIALS_DIR_ENV)
    os.environ[LORA_CREDENTIALS_DIR_ENV] = str(creds)
    args = BuildArgs.parse(
        {
            "fleet_name": "lora",
            "fleet": {
                "routingPolicyRef": {"name": "p"},
                "tiers": [{"name": "cpu", "costPerReplicaHour": "0.50"}],
                "models": [{
                    "name": "tiny", "engine": "vllm", "source": f"file://{model}",
                    "tier": "cpu", "resources": {"cpu": "1"}, "minReplicas": 1,
                    "maxReplicas": 1,
                    "engineArgs": {"dtype": "float32", "max_model_len": TINY_MAX_MODEL_LEN,
                                   "enforce_eager": True, "max_lora_rank": 8},
                    "loraAdapters": [{"name": ADAPTER}],
                    "loraStore": {"uri": STORE_URI, "endpoint": store.endpoint,
                                  "region": store.region,
                                  "credentialsSecretRef": {"name": "adapter-store",
                                                           "key": "credentials"}},
                }],
            },
            # The router's choice for "auto": the adapter first, its base model behind it.
            "policy": {"strategy": "static", "staticOrder": [NAMED, "tiny"]},
            "limits": {"max_tokens": 128, "first_token_timeout_seconds": 120},
        }
    )  # fmt: skip
    try:
        yield from deploy(local_ray, args, str(model))
    finally:
        if saved is None:
            os.environ.pop(LORA_CREDENTIALS_DIR_ENV, None)
        else:
            os.environ[LORA_CREDENTIALS_DIR_ENV] = saved


def complete(fleet: VllmFleet, model: str, prompt: str, max_tokens: int = 32) -> httpx.Response:
    return httpx.post(
        f"{fleet.base_url}/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
              "ignore_eos": True},
        timeout=300,
    )  # fmt: skip


def test_no_other_aws_credentials_are_around() -> None:
    """Precondition of the test below: the replica can only have read the store with the
    credentials file the fleet names (boto3 finds no other)."""
    import boto3

    assert boto3.session.Session().get_credentials() is None


def test_the_adapter_answers_by_name_with_its_own_tokens(fleet: VllmFleet) -> None:
    listed = httpx.get(f"{fleet.base_url}/v1/models", timeout=30).json()["data"]
    assert {m["id"]: m["shoal"].get("adapter_of") for m in listed}[NAMED] == "tiny"
    differ = 0
    for prompt in PROMPTS:
        base, tuned = complete(fleet, "tiny", prompt), complete(fleet, NAMED, prompt)
        assert base.status_code == 200, base.text
        assert tuned.status_code == 200, tuned.text
        assert tuned.headers["x-shoal-model"] == NAMED
        assert tuned.json()["model"] == NAMED
        assert tuned.json()["usage"]["completion_tokens"] == 32
        differ += base.json()["choices"][0]["text"] != tuned.json()["choices"][0]["text"]
        # greedy: the same adapter answers the same tokens again
        again = complete(fleet, NAMED, prompt)
        assert again.json()["choices"][0]["text"] == tuned.json()["choices"][0]["text"]
    assert differ == len(PROMPTS)


def test_the_router_routes_to_the_adapter(fleet: VllmFleet) -> None:
    routed = complete(fleet, "auto", PROMPTS[0])
    assert routed.status_code == 200, routed.text
    assert routed.headers["x-shoal-model"] == NAMED
    named = complete(fleet, NAMED, PROMPTS[0])
    assert routed.json()["choices"][0]["text"] == named.json()["choices"][0]["text"]
    assert (
        fleet.ray.wait_metric("ray_shoal_routing_decisions_total", lambda v: v >= 1, model=NAMED)
        >= 1
    )


def test_the_credentials_stay_out_of_logs_and_metrics(fleet: VllmFleet, store: Any) -> None:
    assert complete(fleet, NAMED, PROMPTS[1]).status_code == 200
    import ray

    secrets = [store.secret_access_key, store.access_key_id]
    scrape = fleet.ray.scrape()
    assert not [s for s in secrets if s in scrape]
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files
    leaked = [p.name for p in files for s in secrets if s.encode() in p.read_bytes()]
    assert not leaked, leaked
