"""The small shared vocabulary of the router: a routing :class:`Decision`, the
:class:`Embedder` protocol, and one calibration :class:`Sample`.

Nothing here imports numpy at run time, so the serving layer and the CLI can import these
names cheaply; numpy appears only in type annotations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


@dataclass(frozen=True)
class Decision:
    """The router's answer for one query.

    ``models`` holds every model of the artifact, best first. ``scores`` is each model's
    blended score (higher is better; in [0, 1]), ``cluster`` the id of the nearest cluster,
    ``elapsed_ms`` the time the decision took (embedding included for :meth:`Router.rank`),
    ``similarity`` the query's cosine similarity to each cluster centroid (what a cascade's
    verifier reads, :mod:`shoal.routing.cascade_score`).
    """

    models: list[str]
    cluster: int
    scores: dict[str, float]
    elapsed_ms: float
    similarity: tuple[float, ...] = ()


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension.

    ``name`` identifies the embedding space: a router artifact records the name of the
    embedder it was fitted with and refuses an embedder of another name.
    """

    @property
    def name(self) -> str:
        """Identifies the embedding space (recorded in artifacts)."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Return one L2-normalised float32 row per text, shape ``(len(texts), dim)``."""
        ...


@dataclass(frozen=True)
class Sample:
    """One calibration query: the prompt, its task, and per-model quality and cost.

    ``scores`` maps each model to a quality in [0, 1]; ``costs`` maps models to USD for this
    query (empty when the source has no cost: models are then treated as equally cheap).
    ``origin`` says where the sample came from (``file:row``), for error messages.
    ``answers`` maps models to the answer text each gave (RouterBench's
    ``<model>|model_response``; empty when the source has none): what a cascade's confidence
    signals are computed from when it is replayed offline.
    """

    prompt: str
    scores: Mapping[str, float]
    task: str = ""
    costs: Mapping[str, float] = field(default_factory=dict)
    origin: str = ""
    answers: Mapping[str, str] = field(default_factory=dict)
