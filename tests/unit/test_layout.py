"""The repository keeps the shape DESIGN.md describes."""

from __future__ import annotations

import subprocess
import sys

from shoal.testing import REPO_ROOT


def test_no_python_in_container_contexts() -> None:
    for folder in ("operator", "serving"):
        found = list((REPO_ROOT / folder).rglob("*.py"))
        assert found == [], f"{folder}/ is a container build context; move {found} under src/shoal"


def test_one_import_package_named_shoal() -> None:
    packages = [p.name for p in (REPO_ROOT / "src").iterdir() if (p / "__init__.py").exists()]
    assert packages == ["shoal"]
    assert not (REPO_ROOT / "operator" / "__init__.py").exists()


def test_top_level_folders_exist() -> None:
    for folder in ("operator", "serving", "crds", "charts", "hack", "tests", "bench", "examples"):
        assert (REPO_ROOT / folder).is_dir(), folder


def test_generated_crds_match_models() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "crds", "--check", "--out", str(REPO_ROOT / "crds")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_import_layers() -> None:
    """Entry points -> planning/routing/autoscaling -> api; never upwards (import-linter)."""
    lint = REPO_ROOT / ".venv" / "bin" / "lint-imports"
    exe = str(lint) if lint.exists() else "lint-imports"
    result = subprocess.run([exe], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
