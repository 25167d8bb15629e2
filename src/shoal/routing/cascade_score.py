"""A fitted cascade chain's confidence in one answer: the plan's signal, computed live.

The offline fit (:mod:`shoal.routing.cascade_fit`) computes the ``agreement`` and ``verifier``
signals for many recorded answers at once; the endpoint (:mod:`shoal.serving.cascade`) needs
the same number for one answer it has just received, with its voters' answers beside it. This
module is that one computation, over the plan's :class:`~shoal.routing.cascade_plan.CascadeChain`
and the texts, so that serving reads an answer exactly as the fit did:

- ``agreement``: the mean similarity of the answer's normalised core to each voter's
  (:func:`shoal.routing.cascade.agreement`; a voter that gave no answer counts 0);
- ``verifier``: ``sigmoid(bias + weights . features)`` over
  :data:`~shoal.routing.cascade_plan.VERIFIER_FEATURES`: the query's cosine similarity to each
  router centroid, the answer's structure for the chain's kind, ``log(1 + characters)``, and
  its agreement with each voter in the chain's order, and (for a chain fitted with it) the
  router's ex-ante quality estimate for the answering model
  (:meth:`~shoal.routing.cascade_plan.ExAnte.estimate`).

Pure, numpy-free arithmetic over a few dozen numbers: microseconds per answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

from shoal.routing import cascade as cs
from shoal.routing.cascade_plan import CascadeChain

#: The plan signals this module computes.
ANSWER_SIGNALS = ("agreement", "verifier")


class ScoreError(ValueError):
    """The chain cannot score this answer (a verifier's weights of the wrong length)."""


def kind_of(chain: CascadeChain) -> cs.AnswerKind:
    """The chain's answer kind (``text`` for one the fit did not know)."""
    return cast(cs.AnswerKind, chain.kind) if chain.kind in ("choice", "number", "code") else "text"


def voter_agreements(chain: CascadeChain, answer: str, voters: Sequence[str | None]) -> list[float]:
    """The answer's similarity to each voter's answer (None: the voter gave none), in order."""
    kind = kind_of(chain)
    core = cs.normalise_answer(answer, kind)
    return [
        0.0 if v is None else cs.similarity(core, cs.normalise_answer(v, kind), kind)
        for v in voters
    ]


def verifier_features(
    chain: CascadeChain,
    similarity: Sequence[float],
    answer: str,
    voters: Sequence[str | None],
) -> list[float]:
    """The verifier's feature row for one answer (the order of ``chain.weights``)."""
    kind = kind_of(chain)
    return [
        *(float(s) for s in similarity),
        cs.structure(answer, kind),
        math.log1p(len(answer)),
        *voter_agreements(chain, answer, voters),
        *([chain.exante.estimate(similarity)] if chain.exante is not None else []),
    ]


def chain_confidence(
    signal: str,
    chain: CascadeChain,
    answer: str,
    voters: Sequence[str | None] = (),
    similarity: Sequence[float] | None = None,
) -> float | None:
    """The confidence of ``answer`` under the plan's ``signal`` for ``chain``; None when it
    cannot be computed here (a verifier without the query's centroid similarities)."""
    if signal == "agreement":
        agree = voter_agreements(chain, answer, voters)
        return sum(agree) / len(agree) if agree else 0.0
    if signal != "verifier":
        raise ScoreError(f"{signal!r} is not an answer signal; one of {', '.join(ANSWER_SIGNALS)}")
    if similarity is None:
        return None
    x = verifier_features(chain, similarity, answer, voters)
    if len(x) != len(chain.weights):
        raise ScoreError(
            f"the verifier of {chain.answer} has {len(chain.weights)} weights for {len(x)} "
            f"features ({len(similarity)} clusters, {len(voters)} voters)"
        )
    z = chain.bias + sum(w * v for w, v in zip(chain.weights, x, strict=True))
    return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))
