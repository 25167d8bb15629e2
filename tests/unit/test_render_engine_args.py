"""``shoal render --engine-args`` on examples/quantized.yaml: the AWQ 7B in the cheap tier, the
full-precision 7B in the premium tier, each rendered into the engine arguments vLLM gets;
the router's and the autoscaler's prices of the variants are their tiers'."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import yaml
from typer.testing import CliRunner

from shoal.api.v1alpha1 import ModelFleet
from shoal.autoscaling.policy import cost_of
from shoal.cli import app
from shoal.devtools.testing import REPO_ROOT
from shoal.routing.pricing import fleet_prices

EXAMPLE = REPO_ROOT / "examples" / "quantized.yaml"


def test_render_shows_the_rendered_engine_arguments() -> None:
    res = CliRunner().invoke(app, ["render", "-f", str(EXAMPLE), "--engine-args"])
    assert res.exit_code == 0, res.output
    (doc,) = list(yaml.safe_load_all(res.stdout))
    models = {m["name"]: m for m in doc["models"]}
    awq = models["qwen-7b-awq"]
    assert awq["tier"] == "cheap"
    # An L4 (Ada) runs AWQ through vLLM's Marlin kernels.
    assert awq["engine_kwargs"] == {
        "max_model_len": 8192, "tensor_parallel_size": 1, "quantization": "awq_marlin",
    }  # fmt: skip
    full = models["qwen-7b"]
    assert full["tier"] == "premium" and "quantization" not in full["engine_kwargs"]
    assert full["engine_kwargs"]["kv_cache_dtype"] == "fp8"
    assert full["engine_kwargs"]["speculative_config"] == {
        "method": "ngram", "num_speculative_tokens": 4,
        "prompt_lookup_min": 2, "prompt_lookup_max": 4,
    }  # fmt: skip
    cpu = models["qwen-0-5b-cpu"]
    assert cpu["gguf_type"] == "Q4_K_M"
    assert cpu["speculative"] == {"method": "ngram", "num_tokens": 4, "ngram_max": 3}


def test_render_refuses_an_unknown_engine_argument(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("max_model_len: 8192", "max_model_length: 8192")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    res = CliRunner().invoke(app, ["render", "-f", str(path), "--engine-args"])
    assert res.exit_code == 1
    assert "engineArgs.max_model_length is not an engine argument" in " ".join(res.output.split())


def test_variants_are_priced_by_their_tiers() -> None:
    fleet = ModelFleet.model_validate(next(
        d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == "ModelFleet"
    ))  # fmt: skip
    prices = fleet_prices(fleet.spec)
    assert prices["qwen-7b-awq"].per_replica_hour == 0.80
    assert prices["qwen-7b"].per_replica_hour == 4.00
    assert cost_of(fleet.spec, {"qwen-7b-awq": 2, "qwen-7b": 1}) == Decimal("5.60")


def test_render_shows_where_the_lora_adapters_come_from() -> None:
    res = CliRunner().invoke(
        app, ["render", "-f", str(REPO_ROOT / "examples" / "lora.yaml"), "--engine-args"]
    )
    assert res.exit_code == 0, res.output
    (doc,) = list(yaml.safe_load_all(res.stdout))
    (model,) = doc["models"]
    assert model["engine_kwargs"]["enable_lora"] is True
    assert model["engine_kwargs"]["max_loras"] == 2
    assert model["lora"] == {
        "dynamic_lora_loading_path": "s3://adapters/qwen-7b",
        "adapters": ["qwen-7b:legal", "qwen-7b:sql"],
        "replica_env": {
            "AWS_ENDPOINT_URL_S3": "http://minio.storage.svc:9000",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": "/var/run/shoal/lora-credentials/qwen-7b",
        },
    }
    assert "REPLACE-ME" not in res.stdout  # the Secret's content is not the fleet's
