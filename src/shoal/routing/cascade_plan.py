"""A cascade's plan: per-cluster thresholds that decide whether a cheap answer is accepted.

A cascade answers with the cheapest model of the ex-ante ranking first, scores its answer with a
confidence signal, and escalates to the next model only when the score is under the threshold
fitted for the query's cluster. The plan is fitted offline (``shoal router fit``) and travels in
the router artifact's JSON header under the key ``"cascade"``, so every serving replica reads the
same thresholds as the artifact's clusters. This module is the shared contract between the
fitting side (:mod:`shoal.routing`) and the serving side (:mod:`shoal.serving`): pure data and
its (de)serialisation, nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Header key of the plan in the router artifact.
HEADER_KEY = "cascade"

#: The confidence signals a plan may be fitted for. ``logprob_*`` read the first answer's token
#: log-probabilities (mean, minimum, mean top-1/top-2 margin); ``agreement`` compares two cheap
#: answers; ``verifier`` scores (query, answer) with a model fitted on calibration data.
SIGNALS = ("logprob_mean", "logprob_min", "logprob_margin", "agreement", "verifier")


#: :attr:`CascadeChain.answer` of a chain whose answering model is the router's own choice for
#: the query: the first model of the router's ranking at the chain's :attr:`CascadeChain.alpha`
#: (``Router.rank(text, alpha=chain.alpha).models[0]``). A chain with it and no ``escalate``
#: is single-shot routing for that cluster, so the fit can always fall back to routing.
ROUTED = "@router"

#: The verifier's features, in the order of :attr:`CascadeChain.weights`: the query's cosine
#: similarity to each artifact centroid (``similarity``, one feature per cluster), the answer's
#: :func:`~shoal.routing.cascade.structure` for the chain's answer kind, ``log(1 + characters)``
#: of the answer, its :func:`~shoal.routing.cascade.agreement` with each of the chain's
#: voters (one feature per voter, in the chain's order; none without voters), and, only for a
#: chain with :attr:`CascadeChain.exante`, the router's ex-ante quality estimate for the
#: answering model (:meth:`ExAnte.estimate`).
VERIFIER_FEATURES = ("similarity", "structure", "log_length", "agreement", "exante")


@dataclass(frozen=True)
class ExAnte:
    """The router's own estimate of the answering model's quality for a query, as the router
    scores: the model's per-cluster quality (the artifact's ``quality`` column) blended over
    the query's ``top_p`` most similar centroids by a softmax of cosine similarity divided by
    ``temperature``. Dekoninck et al.'s ex-ante estimate, beside the verifier's post-hoc ones.
    """

    quality: tuple[float, ...]
    top_p: int = 3
    temperature: float = 0.1

    def estimate(self, similarity: Sequence[float]) -> float:
        """The blended quality for one query's similarity to each centroid (ties: lower index
        first, as a stable sort)."""
        order = sorted(range(len(similarity)), key=lambda i: -float(similarity[i]))
        top = order[: max(1, min(self.top_p, len(order)))]
        best = float(similarity[top[0]])
        z = [math.exp((float(similarity[i]) - best) / self.temperature) for i in top]
        return sum(w * self.quality[i] for w, i in zip(z, top, strict=True)) / sum(z)

    def to_header(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"quality": list(self.quality), "top_p": self.top_p, "temperature": self.temperature}

    @classmethod
    def from_header(cls, raw: Mapping[str, Any]) -> ExAnte:
        """Parse :meth:`to_header`'s form."""
        return cls(
            quality=tuple(float(q) for q in raw["quality"]),
            top_p=int(raw.get("top_p", 3)),
            temperature=float(raw.get("temperature", 0.1)),
        )


class CascadePlanError(ValueError):
    """A cascade plan that cannot be used (unknown signal, wrong number of thresholds)."""


@dataclass(frozen=True)
class CascadeChain:
    """The models a cluster's cascade calls, fitted offline (optional in a plan).

    ``answer`` answers first; ``voters`` are asked the same query at the same time, only for
    the agreement signal (their answers are compared with ``answer``'s and then dropped);
    ``escalate`` is called when the confidence is under the cluster's threshold (None: never,
    the cluster is served by ``answer`` alone). ``kind`` is how answers are compared
    (``choice``, ``number``, ``code``, ``text``: :func:`~shoal.routing.cascade.answer_kind`),
    the majority kind of the cluster's calibration queries. ``weights`` and ``bias`` are the
    verifier's, over :data:`VERIFIER_FEATURES` (``similarity`` and ``agreement`` expanded to one
    weight per cluster and per voter): ``confidence = sigmoid(bias + weights . features)``;
    empty for other signals. ``alpha`` is set only when ``answer`` is :data:`ROUTED`: the
    quality/cost weight the router ranks with to pick the answering model. ``exante`` (None in
    plans fitted before it) adds the router's ex-ante estimate to the verifier's features.
    """

    answer: str
    voters: tuple[str, ...] = ()
    escalate: str | None = None
    kind: str = "text"
    weights: tuple[float, ...] = ()
    bias: float = 0.0
    alpha: float | None = None
    exante: ExAnte | None = None

    def __post_init__(self) -> None:
        if (self.answer == ROUTED) != (self.alpha is not None):
            raise CascadePlanError(
                f"a chain answered by {ROUTED!r} needs the router's alpha, and only it has one "
                f"(answer {self.answer!r}, alpha {self.alpha!r})"
            )

    @property
    def routed(self) -> bool:
        """Whether the answering model is the router's per-query choice (:data:`ROUTED`)."""
        return self.answer == ROUTED

    def to_header(self) -> dict[str, Any]:
        """JSON-safe form (``alpha`` only for a routed chain, so older readers see the same)."""
        return {
            "answer": self.answer,
            "voters": list(self.voters),
            "escalate": self.escalate,
            "kind": self.kind,
            "weights": list(self.weights),
            "bias": self.bias,
            **({"alpha": self.alpha} if self.alpha is not None else {}),
            **({"exante": self.exante.to_header()} if self.exante is not None else {}),
        }

    @classmethod
    def from_header(cls, raw: Mapping[str, Any]) -> CascadeChain:
        """Parse :meth:`to_header`'s form (``KeyError``/``TypeError``/``ValueError`` if bad)."""
        escalate = raw.get("escalate")
        return cls(
            answer=str(raw["answer"]),
            voters=tuple(str(v) for v in raw.get("voters", ())),
            escalate=None if escalate is None else str(escalate),
            kind=str(raw.get("kind", "text")),
            weights=tuple(float(w) for w in raw.get("weights", ())),
            bias=float(raw.get("bias", 0.0)),
            alpha=None if raw.get("alpha") is None else float(raw["alpha"]),
            exante=None if raw.get("exante") is None else ExAnte.from_header(raw["exante"]),
        )

    @property
    def calls(self) -> int:
        """Most models this chain calls for one query."""
        return 1 + len(self.voters) + (self.escalate is not None)


@dataclass(frozen=True)
class CascadePlan:
    """Accept-or-escalate thresholds, one per router cluster.

    An answer whose confidence is at or above its cluster's threshold is accepted; under it the
    cascade escalates. ``math.inf`` means "always escalate" for that cluster and ``-math.inf``
    "always accept" (the fit found that escalation never pays, or always does).
    """

    signal: str
    thresholds: tuple[float, ...]
    #: Threshold for a query whose cluster is unknown (no artifact cluster matched).
    default_threshold: float
    #: Most models one request may call, the first included.
    max_chain: int = 2
    #: The policy's quality/cost weight the thresholds were fitted for.
    cost_weight: float = 0.0
    #: What the plan was fitted on (a data set name), for status and logs.
    fitted_on: str = ""
    #: Optional: each cluster's chain as fitted offline (one per threshold; empty: the serving
    #: side builds the chain from the ex-ante ranking).
    chains: tuple[CascadeChain, ...] = ()

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise CascadePlanError(
                f"unknown cascade signal {self.signal!r}; expected one of {', '.join(SIGNALS)}"
            )
        if self.max_chain < 1:
            raise CascadePlanError(f"max_chain must be at least 1, not {self.max_chain}")
        if any(math.isnan(t) for t in (*self.thresholds, self.default_threshold)):
            raise CascadePlanError("a cascade threshold is NaN")
        if self.chains and len(self.chains) != len(self.thresholds):
            raise CascadePlanError(
                f"the cascade plan has {len(self.chains)} chains for "
                f"{len(self.thresholds)} thresholds"
            )

    def chain(self, cluster: int | None) -> CascadeChain | None:
        """The fitted chain for ``cluster`` (None without chains or for an unknown cluster)."""
        if cluster is None or not 0 <= cluster < len(self.chains):
            return None
        return self.chains[cluster]

    def threshold(self, cluster: int | None) -> float:
        """The threshold for ``cluster`` (the default when it is None or out of range)."""
        if cluster is None or not 0 <= cluster < len(self.thresholds):
            return self.default_threshold
        return self.thresholds[cluster]

    def accepts(self, cluster: int | None, confidence: float) -> bool:
        """Whether an answer with this confidence is kept rather than escalated."""
        return confidence >= self.threshold(cluster)

    def to_header(self) -> dict[str, Any]:
        """JSON-safe form for the artifact header (infinities as strings)."""
        return {
            "signal": self.signal,
            "thresholds": [_dump(t) for t in self.thresholds],
            "default_threshold": _dump(self.default_threshold),
            "max_chain": self.max_chain,
            "cost_weight": self.cost_weight,
            "fitted_on": self.fitted_on,
            **({"chains": [c.to_header() for c in self.chains]} if self.chains else {}),
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> CascadePlan | None:
        """The plan in an artifact header, or None when the artifact carries none."""
        raw = header.get(HEADER_KEY)
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise CascadePlanError("the artifact's cascade entry is not an object")
        try:
            return cls(
                signal=str(raw["signal"]),
                thresholds=tuple(_load(t) for t in raw["thresholds"]),
                default_threshold=_load(raw["default_threshold"]),
                max_chain=int(raw.get("max_chain", 2)),
                cost_weight=float(raw.get("cost_weight", 0.0)),
                fitted_on=str(raw.get("fitted_on", "")),
                chains=tuple(CascadeChain.from_header(c) for c in raw.get("chains", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CascadePlanError(f"the artifact's cascade entry is malformed: {exc}") from exc

    def check_clusters(self, clusters: int) -> None:
        """Refuse a plan fitted for a different number of clusters than the artifact's."""
        if len(self.thresholds) != clusters:
            raise CascadePlanError(
                f"the cascade plan has {len(self.thresholds)} thresholds for {clusters} clusters"
            )


def _dump(value: float) -> float | str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _load(value: Any) -> float:
    return float(value)  # float("inf") / float("-inf") read the dumped strings
