"""The project's licence: the LICENSE file says what pyproject.toml and the image labels say."""

from __future__ import annotations

import tomllib

from shoal.devtools.testing import REPO_ROOT


def test_license_file_is_the_apache_license_the_metadata_names() -> None:
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    label = 'org.opencontainers.image.licenses="Apache-2.0"'
    assert label in (REPO_ROOT / "operator" / "Dockerfile").read_text()
