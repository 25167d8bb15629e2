"""The live confidence of one answer (serving) equals the fit's (offline) for the same answer.

The endpoint scores each first answer with :func:`shoal.routing.cascade_score.chain_confidence`;
the thresholds it compares with were fitted on :class:`shoal.routing.cascade_fit.Signals`. The
two must read an answer the same way, or the fitted thresholds mean nothing at serving time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_cascade_fit import CENTROIDS, MODELS, cascade_samples, embed

from shoal.routing import cascade as cs
from shoal.routing import cascade_fit as cf
from shoal.routing.cascade_plan import CascadeChain
from shoal.routing.cascade_score import ScoreError, chain_confidence, verifier_features


@pytest.mark.parametrize("signal", ["agreement", "verifier+agreement", "verifier"])
def test_the_live_score_is_the_fits_score(signal: str) -> None:
    samples = cascade_samples(seed=2)
    vectors = embed(samples)
    sig = cf.signals(samples, MODELS, vectors, CENTROIDS)
    plan = cf.fit_plan(sig, signal=signal, cost_weight=0.05, reference="big")
    small, voter = MODELS.index("small"), MODELS.index("voter")
    voters = (voter,) if "agreement" in signal else ()
    if plan.signal == "verifier":
        x = sig.features(small, voters)
        fitted = cs.fit_logistic(x, sig.quality[:, small])
        offline = fitted.score(x)
        chain = CascadeChain(
            "small",
            tuple(MODELS[v] for v in voters),
            "big",
            kind="choice",
            weights=tuple(float(w) for w in fitted.weights),
            bias=fitted.bias,
        )
    else:
        offline = sig.agreement(small, voters)
        chain = CascadeChain("small", ("voter",), "big", kind="choice")
    for i, s in enumerate(samples):
        live = chain_confidence(
            plan.signal,
            CascadeChain(**{**chain.__dict__, "kind": sig.kinds[i]}),
            s.answers["small"],
            [s.answers[MODELS[v]] for v in voters] if voters else (),
            similarity=[float(v) for v in sig.similarity[i]],
        )
        assert live == pytest.approx(float(offline[i]), abs=1e-9), s.origin


def test_a_voter_without_an_answer_disagrees() -> None:
    chain = CascadeChain("small", ("a", "b"), "big", kind="choice")
    assert chain_confidence("agreement", chain, "The answer is B", ["(B)", None]) == 0.5
    assert chain_confidence("agreement", chain, "no letter here", ["(B)", "B"]) == 0.0


def test_the_verifier_needs_the_querys_similarities_and_matching_weights() -> None:
    chain = CascadeChain("small", (), "big", kind="code", weights=(0.5, 0.5, 2.0, 0.1), bias=-1)
    code = "```python\ndef f(x):\n    return x\n```"
    assert verifier_features(chain, [0.9, 0.1], code, []) == [0.9, 0.1, 1.0, math.log1p(len(code))]
    assert chain_confidence("verifier", chain, code, similarity=None) is None
    z = -1 + 0.5 * 0.9 + 0.5 * 0.1 + 2.0 + 0.1 * math.log1p(len(code))
    assert chain_confidence("verifier", chain, code, similarity=[0.9, 0.1]) == pytest.approx(
        1 / (1 + math.exp(-z))
    )
    with pytest.raises(ScoreError, match="4 weights for 5 features"):
        chain_confidence("verifier", chain, code, similarity=[0.9, 0.1, 0.0])
    with pytest.raises(ScoreError, match="not an answer signal"):
        chain_confidence("logprob_mean", chain, code)
    assert np.isfinite(chain_confidence("verifier", chain, "x" * 10**6, similarity=[0, 0]) or 0)


def _routed_signals(seed: int) -> tuple[list, cf.Signals]:
    """Synthetic samples whose queries lie between the two centroids, with router tables."""
    rng = np.random.default_rng(seed)
    samples = cascade_samples(seed=seed)
    vectors = embed(samples) + rng.normal(0.0, 0.2, (len(samples), 2))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tables = cf.RouterTables(
        quality=rng.random((2, 3)), cost=rng.random((2, 3)), top_p=2, temperature=0.1
    )
    return samples, cf.signals(samples, MODELS, vectors, CENTROIDS, router=tables)


def test_the_live_ex_ante_estimate_is_the_fits() -> None:
    _, sig = _routed_signals(seed=3)
    assert sig.router is not None and sig.exante is not None
    for j in range(len(MODELS)):
        live = sig.router.plan_exante(j)
        for i in range(sig.n):
            assert live.estimate(list(sig.similarity[i])) == pytest.approx(
                float(sig.exante[i, j]), abs=1e-12
            )


@pytest.mark.parametrize("signal", ["verifier", "verifier+agreement"])
def test_a_fitted_chain_with_the_ex_ante_feature_scores_live_as_in_the_fit(signal: str) -> None:
    samples, sig = _routed_signals(seed=4)
    plan = cf.fit_plan(sig, signal=signal, cost_weight=0.05, reference="big")
    checked = 0
    for c, chain in enumerate(plan.chains):
        if not chain.weights:
            continue
        assert chain.exante is not None
        answer = MODELS.index(chain.answer)
        x = sig.features(answer, [MODELS.index(v) for v in chain.voters])
        offline = cs.Logistic(np.array(chain.weights), chain.bias).score(x)
        for i in np.flatnonzero(sig.cluster == c):  # a chain scores its cluster's queries
            s = samples[i]
            live = chain_confidence(
                plan.signal,
                chain,
                s.answers[chain.answer],
                [s.answers[v] for v in chain.voters],
                similarity=[float(v) for v in sig.similarity[i]],
            )
            assert live == pytest.approx(float(offline[i]), abs=1e-9), s.origin
        checked += 1
    assert checked, "the plan verifies some cluster's answers"
