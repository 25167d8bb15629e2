"""Helpers shared by the embedders: L2 normalisation and locating files that PyPI data
packages install (models are never downloaded at run time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


class EmbedderUnavailable(RuntimeError):
    """An embedder's model files or runtime are not installed in this environment."""


def l2_normalise(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length (all-zero rows stay zero), as float32."""
    a = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = np.divide(
        a, norms, out=np.zeros_like(a), where=norms > 0
    ).astype(np.float32)
    return out


def package_file(package: str, *parts: str, install_hint: str) -> Path:
    """A file inside an installed package, without importing the package's code."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable(f"package {package!r} is not installed; {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise EmbedderUnavailable(f"{path} is missing; {install_hint}")
    return path
