"""The generated tiny Hugging Face Llama loads with transformers and is cached by its params."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.serving.tinyhf import TinyHFModelSpec, ensure_tiny_hf_model

pytest.importorskip("torch", reason="torch (the vllm extra) not installed")
pytest.importorskip("transformers", reason="transformers (the vllm extra) not installed")

SPEC = TinyHFModelSpec(name="unit-tiny", max_position_embeddings=128)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_hf_model(SPEC, tmp_path_factory.mktemp("tinyhf") / "m")


def test_loads_and_generates(model_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (128, 2, 2)
    assert config.max_position_embeddings == 128
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert config.vocab_size == len(tok) <= SPEC.vocab_size
    assert tok.eos_token_id == config.eos_token_id
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<s><|user|>\nhi\n<|assistant|>\n"
    # Byte-level: any text (here outside the training corpus) round-trips.
    ids = tok("Zürich, 東京 {}", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "Zürich, 東京 {}"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert next(model.parameters()).dtype == torch.float32
    out = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == len(ids) + 3


def test_cached_until_the_parameters_change(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_tiny_hf_model(SPEC, model_dir) == model_dir
    assert weights.stat().st_mtime_ns == before
    other = TinyHFModelSpec(name="unit-tiny", max_position_embeddings=128, seed=1)
    assert other.digest() != SPEC.digest()
    ensure_tiny_hf_model(other, model_dir)
    assert json.loads((model_dir / "shoal-tiny.json").read_text())["digest"] == other.digest()


def test_bad_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        ensure_tiny_hf_model(TinyHFModelSpec(hidden_size=100, heads=3), tmp_path / "bad")
