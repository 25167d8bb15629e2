"""The GPU-only tests (marker ``gpu``: FP8 and AWQ 7B variants, a real model on vLLM's GPU
build) are collected on a machine without a GPU and skipped with their reason shown, even
where servers are required (``SHOAL_REQUIRE_SERVERS=1`` fails other skips). Runs pytest on
them in a subprocess, as CI would, with any GPU hidden from torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from shoal.devtools.testing import REPO_ROOT

GPU_TESTS = [
    "tests/integration/serving/test_vllm_quantized_gpu.py",
    "tests/integration/serving/test_vllm_gpu.py",
]
#: Starts pytest on vLLM-importing modules (torch): tens of seconds on a busy machine.
pytestmark = pytest.mark.slow

REASONS = ("no NVIDIA GPU visible to torch", "vLLM is not installed")


def test_gpu_tests_are_collected_and_skipped_with_their_reason() -> None:
    env = {**os.environ, "SHOAL_REQUIRE_SERVERS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", "-m", "gpu",
         "-o", "addopts=", *GPU_TESTS],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    last = out.stdout.strip().splitlines()[-1]
    summary = {k: int(n) for n, k in re.findall(r"(\d+) (failed|passed|skipped|errors?)", last)}
    assert summary.get("skipped", 0) >= len(GPU_TESTS) + 2, out.stdout + out.stderr
    assert set(summary) == {"skipped"}, out.stdout + out.stderr
    for path in GPU_TESTS:
        shown = [
            line for line in out.stdout.splitlines() if line.startswith("SKIPPED") and path in line
        ]
        assert shown, f"{path}: no skip reason shown\n{out.stdout}"
        assert all(any(r in line for r in REASONS) for line in shown), shown
