"""The learned cluster router: embed a query, find its nearest clusters, rank the models.

Public surface (stable; the serving layer and the operator code against it):

- :func:`load_router` -> :class:`Router` with ``models``, ``default_alpha``,
  ``rank(text, alpha=None) -> Decision`` and ``rank_many(texts, alpha=None)``.
- :class:`Decision`, :class:`Embedder` (protocol), :class:`Sample` (one calibration query).
- :func:`fit_router` -> artifact bytes (:func:`fit_policy_router` from a policy spec);
  :func:`artifact_checksum`, :func:`read_artifact_info`
  (header only, no numpy), :func:`write_artifact` (atomic), :data:`FORMAT_VERSION`.
- :func:`load_calibration` / :func:`parse_calibration` (JSONL, RouterDC JSON, RouterBench
  CSV) raising :class:`CalibrationError`; :func:`make_embedder` / :func:`embedder_for_policy`.

Importing this package is cheap: numpy and the embedders load on first use of a name that
needs them (module ``__getattr__``), so ``shoal --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shoal.routing.artifact import (
    FORMAT_VERSION,
    ArtifactError,
    ArtifactInfo,
    artifact_checksum,
    read_artifact_info,
    write_artifact,
)
from shoal.routing.data import CalibrationError, load_calibration, parse_calibration
from shoal.routing.types import Decision, Embedder, Sample

if TYPE_CHECKING:
    from shoal.routing.embedders import (
        DEFAULT_EMBEDDER,
        EmbedderUnavailable,
        embedder_for_policy,
        make_embedder,
    )
    from shoal.routing.fit import fit_policy_router, fit_router
    from shoal.routing.router import Router, load_router

__all__ = [
    "DEFAULT_EMBEDDER",
    "FORMAT_VERSION",
    "ArtifactError",
    "ArtifactInfo",
    "CalibrationError",
    "Decision",
    "Embedder",
    "EmbedderUnavailable",
    "Router",
    "Sample",
    "artifact_checksum",
    "embedder_for_policy",
    "fit_policy_router",
    "fit_router",
    "load_calibration",
    "load_router",
    "make_embedder",
    "parse_calibration",
    "read_artifact_info",
    "write_artifact",
]

_LAZY = {
    "Router": "shoal.routing.router",
    "load_router": "shoal.routing.router",
    "fit_router": "shoal.routing.fit",
    "fit_policy_router": "shoal.routing.fit",
    "make_embedder": "shoal.routing.embedders",
    "embedder_for_policy": "shoal.routing.embedders",
    "EmbedderUnavailable": "shoal.routing.embedders",
    "DEFAULT_EMBEDDER": "shoal.routing.embedders",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.routing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
