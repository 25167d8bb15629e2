"""Under SHOAL_REQUIRE_SERVERS=1 a skip fails, however it is written (importorskip at module
level, a skipif marker, pytest.skip in a test); tests marked gpu keep skipping. Runs pytest
on probe files in a subprocess, with this suite's conftest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.devtools.testing import REPO_ROOT

PROBES = {
    "test_probe_import.py": 'import pytest\\npytest.importorskip("no_such_package_shoal")\\n'
    "def test_a() -> None:\\n    pass\\n",
    "test_probe_skipif.py": "import pytest\\n@pytest.mark.skipif(True, reason='no server')\\n"
    "def test_b() -> None:\\n    pass\\n"
    "@pytest.mark.gpu\\n@pytest.mark.skipif(True, reason='no GPU')\\n"
    "def test_gpu() -> None:\\n    pass\\n"
    "def test_inline() -> None:\\n    pytest.skip('not here')\\n",
}


def _run(tmp_path: Path, required: bool) -> str:
    probes = tmp_path / "tests" / "probes"
    probes.mkdir(parents=True)
    (tmp_path / "tests" / "conftest.py").write_text(
        (REPO_ROOT / "tests" / "conftest.py").read_text()
    )
    for name, text in PROBES.items():
        (probes / name).write_text(text.encode().decode("unicode_escape"))
    env = {**os.environ, "SHOAL_REQUIRE_SERVERS": "1" if required else "0"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", "--continue-on-collection-errors",
         "-o", "addopts=", "-o", "markers=gpu: probe", str(probes)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return out.stdout


def _summary(out: str) -> dict[str, int]:
    last = out.strip().splitlines()[-1]
    return {k: int(n) for n, k in re.findall(r"(\d+) (failed|passed|skipped|error)", last)}


@pytest.mark.parametrize("required", [True, False])
def test_skips_fail_where_required(tmp_path: Path, required: bool) -> None:
    out = _run(tmp_path, required)
    summary = _summary(out)
    if required:
        # importorskip (collection), skipif and pytest.skip fail; the gpu test still skips.
        assert summary.get("skipped") == 1, out
        assert summary.get("failed", 0) + summary.get("error", 0) == 3, out
        assert "SHOAL_REQUIRE_SERVERS is set" in out
    else:
        assert summary == {"skipped": 4}, out
