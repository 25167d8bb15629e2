"""Offline replay of a labelled data set as a stream of requests with bandit feedback.

Each query of the stream is routed by the current tables; only the chosen model's true
score is revealed (as in production, where a client scores the answer it got) and counted
for the query's nearest cluster. Every ``batch`` events the quality tables are refit
(:func:`~shoal.routing.refit.posterior_quality`), as the operator does on an interval. At
the requested checkpoints the refit router is evaluated on a held-out set.

Exploration: ``greedy`` (the router's own choice), ``epsilon`` (a uniform other model with
probability ``epsilon``) or ``thompson`` (each request samples per-cluster qualities from
Beta posteriors and takes the best; it explores where the tables are uncertain). Every
logged event carries its *propensity*, the probability the logging policy gave the model it
chose (exact for greedy and epsilon, a Monte Carlo frequency over ``propensity_draws`` extra
posterior draws for Thompson), so the log supports off-policy estimates
(:mod:`shoal.routing.offpolicy`).

The guard (``guard=True``): a share ``holdout`` of the events is kept out of the refit and
logged apart; every ``guard_every`` events the refit (the *candidate*) is compared with the
tables in use on those held-out events (a doubly robust estimate of the difference); it is
adopted only when the lower confidence bound of that difference exceeds ``margin``,
otherwise it stays in shadow and the tables in use keep routing. ``ab`` aims exploration at
that decision: a share ``ab`` of the requests goes to the candidate's choice and as many to
the tables in use's, so that where the two disagree both have propensities of at least
``ab`` and the estimate's weights stay small. ``pessimism`` ranks the
refit's cells by a lower confidence bound (:func:`~shoal.routing.refit.pessimistic_quality`).
Pure numpy over embedded queries; seeded, so a replay is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from shoal.routing import offpolicy, scoring
from shoal.routing.evaluate import summarise_choice
from shoal.routing.refit import Feedback, pessimistic_quality, posterior_quality
from shoal.routing.tables import TableRouter

Explore = Literal["greedy", "epsilon", "thompson"]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Labelled:
    """Embedded queries with every model's quality and cost ``(n, m)`` and their tasks."""

    vectors: npt.NDArray[np.float32]
    quality: F64
    cost: F64
    tasks: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.quality.shape[0])


@dataclass(frozen=True)
class ReplayConfig:
    """How the stream is replayed."""

    prior_weight: float = 8.0
    explore: Explore = "thompson"
    epsilon: float = 0.05
    batch: int = 50
    seed: int = 0
    alpha: float | None = None
    checkpoints: tuple[int, ...] = ()
    #: Lower-confidence-bound weight of the refit tables (0: the posterior mean).
    pessimism: float = 0.0
    #: Adopt a refit only when the off-policy guard says it routes better.
    guard: bool = False
    #: Share of the events held out of the refit for the guard (used when ``guard``).
    holdout: float = 0.3
    #: Events between two guard decisions (a multiple of ``batch`` in effect).
    guard_every: int = 500
    #: The adoption margin: the difference's lower bound must exceed it (accuracy units).
    margin: float = 0.0
    #: Normal quantile of the lower bound (one-sided 95% by default).
    z: float = offpolicy.Z95
    #: Off-policy estimator of the guard (IPS whatever this says under greedy logging:
    #: without exploration, no other model has a propensity to weigh).
    estimator: offpolicy.Method = "dr"
    #: Extra posterior draws per request that estimate Thompson's propensities.
    propensity_draws: int = 63
    #: Under the guard, the share of requests sent to the candidate's choice, and as many to
    #: the tables in use (the rest to the exploration policy): the guard's A/B comparison.
    ab: float = 0.0


@dataclass
class FeedbackLog:
    """Every revealed event: the query's row in the stream, the model, its score, cluster,
    the logging policy's propensity of that model, and whether it was held out of the refit."""

    rows: list[int] = field(default_factory=list)
    models: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    clusters: list[int] = field(default_factory=list)
    propensity: list[float] = field(default_factory=list)
    held: list[bool] = field(default_factory=list)

    def logged(self, held: bool | None = None) -> tuple[npt.NDArray[np.int64], offpolicy.Logged]:
        """Stream rows and the :class:`~shoal.routing.offpolicy.Logged` events (``held``:
        only the held-out ones, or only the others; None: all)."""
        keep = np.ones(len(self.rows), dtype=bool)
        if held is not None:
            keep = np.array(self.held, dtype=bool) == held
        rows = np.array(self.rows, dtype=np.int64)[keep]
        log = offpolicy.Logged.of(
            np.array(self.models, dtype=np.int64)[keep],
            np.array(self.scores, dtype=np.float64)[keep],
            np.array(self.propensity, dtype=np.float64)[keep],
        )
        return rows, log


@dataclass(frozen=True)
class GuardDecision:
    """One guard look: events seen, the estimated difference (candidate minus tables in
    use), its lower bound, whether the candidate was adopted, and (replay only: every score
    is known) the true difference on the same held-out events."""

    events: int
    held_out: int
    estimate: float
    lower: float
    adopted: bool
    true_difference: float


@dataclass
class ReplayResult:
    """The learning curve, the final feedback counts and posterior, and the event log.

    ``feedback`` counts the events the refit learns from (all of them without the guard);
    ``router`` is the router in use at the end (the last adopted refit under the guard) and
    ``adopted_feedback`` the counts it was refit from (None: the starting tables).
    """

    curve: list[dict[str, Any]]
    feedback: Feedback
    router: TableRouter
    log: FeedbackLog
    explored: int
    candidate: TableRouter | None = None
    adopted_feedback: Feedback | None = None
    decisions: list[GuardDecision] = field(default_factory=list)


def evaluate_choice(
    choice: npt.NDArray[Any], data: Labelled, models: Sequence[str]
) -> dict[str, Any]:
    """Accuracy (mean of per-task), per-task accuracy and cost per query of ``choice``."""
    s = summarise_choice(choice, data.quality, data.cost, list(data.tasks), models)
    return {k: s[k] for k in ("accuracy", "per_task", "cost", "cost_per_query", "share")}


def _thompson(
    router: TableRouter,
    fb: Feedback,
    prior: F64,
    vectors: npt.NDArray[np.float32],
    cfg: ReplayConfig,
    rng: np.random.Generator,
    draws: int = 1,
) -> npt.NDArray[np.int64]:
    """``draws`` Thompson choices per query, ``(draws, b)``."""
    idx, w = router.neighbours(vectors)
    w0 = max(cfg.prior_weight, 1e-3)
    a = np.maximum(w0 * prior + fb.score_sum, 1e-3)[idx]  # (b, p, m)
    b = np.maximum(w0 * (1.0 - prior) + fb.events - fb.score_sum, 1e-3)[idx]
    q = rng.beta(a, b, size=(draws, *a.shape))
    lo, hi = q.min(axis=3, keepdims=True), q.max(axis=3, keepdims=True)
    qn = np.divide(q - lo, hi - lo, out=np.zeros_like(q), where=hi - lo > 1e-12)
    cn = scoring.minmax_rows(router.cost.astype(np.float32))[idx]
    alpha = router.alpha if cfg.alpha is None else cfg.alpha
    s = alpha * qn + (1.0 - alpha) * (1.0 - cn)
    blended = np.einsum("bp,dbpm->dbm", w, s)
    out: npt.NDArray[np.int64] = blended.argmax(axis=2).astype(np.int64)
    return out


def _explore_probability(
    cfg: ReplayConfig,
    a: npt.NDArray[np.int64],
    greedy: npt.NDArray[np.int64],
    draws: npt.NDArray[np.int64] | None,
    models: int,
) -> F64:
    """The probability the exploration policy gives model ``a`` of each query: exact for
    greedy and epsilon, the frequency among the posterior ``draws`` for Thompson."""
    if cfg.explore == "thompson" and draws is not None:
        freq: F64 = (draws == a).mean(axis=0)
        return freq
    if cfg.explore == "epsilon":
        p_other = cfg.epsilon / max(models - 1, 1)
        eps: F64 = np.where(a == greedy, 1.0 - cfg.epsilon, p_other)
        return eps
    same: F64 = (a == greedy).astype(np.float64)
    return same


def reward_model(router: TableRouter, table: F64, vectors: npt.NDArray[Any]) -> F64:
    """Each model's predicted score for each query: ``table`` blended over the router's
    ``top_p`` nearest clusters (the doubly robust estimate's reward model)."""
    idx, w = router.neighbours(vectors)
    out: F64 = np.einsum("np,npm->nm", w.astype(np.float64), table[idx])
    return out


def guard_compare(
    candidate: TableRouter,
    in_use: TableRouter,
    rows: npt.NDArray[np.int64],
    log: offpolicy.Logged,
    stream: Labelled,
    cfg: ReplayConfig,
    model_table: F64,
) -> tuple[offpolicy.Estimate, float]:
    """The off-policy estimate of ``candidate`` minus ``in_use`` on the logged events, and
    the true difference on the same queries (the replay knows every score)."""
    vec = stream.vectors[rows]
    m = candidate.quality.shape[1]
    new = candidate.choose(vec, alpha=cfg.alpha)
    old = in_use.choose(vec, alpha=cfg.alpha)
    # Greedy logging gives no other model a chance: a reward model would only extrapolate
    # there, so the guard reads the log by inverse propensities alone.
    method: offpolicy.Method = "ips" if cfg.explore == "greedy" else cfg.estimator
    est = offpolicy.compare(
        log,
        offpolicy.one_hot(new, m),
        offpolicy.one_hot(old, m),
        method=method,
        reward_model=reward_model(candidate, model_table, vec),
    )
    q = stream.quality[rows]
    true = float((q[np.arange(rows.size), new] - q[np.arange(rows.size), old]).mean())
    return est, true


def replay(
    router: TableRouter, stream: Labelled, held_out: Labelled, cfg: ReplayConfig
) -> ReplayResult:
    """Stream ``stream`` through ``router`` with bandit feedback; evaluate on ``held_out``."""
    rng = np.random.default_rng(cfg.seed)
    # Propensity draws and the hold-out split use their own streams, so the choices of a
    # replay without the guard do not depend on them.
    prop_rng = np.random.default_rng([cfg.seed, 1])
    split_rng = np.random.default_rng([cfg.seed, 2])
    mix_rng = np.random.default_rng([cfg.seed, 3])
    prior = router.quality.copy()
    k, m = prior.shape
    fb = Feedback.zeros(k, m)  # what the refit learns from
    everything = Feedback.zeros(k, m)  # every revealed score (exploration's posterior)
    log = FeedbackLog()
    marks = sorted({c for c in cfg.checkpoints if 0 <= c <= len(stream)} | {0, len(stream)})
    curve: list[dict[str, Any]] = []
    current = router  # the tables in use: they route the stream and are evaluated
    candidate: TableRouter | None = None
    adopted: Feedback | None = None
    decisions: list[GuardDecision] = []
    explored = 0
    next_guard = cfg.guard_every

    def checkpoint(events: int) -> None:
        point = evaluate_choice(
            current.choose(held_out.vectors, alpha=cfg.alpha), held_out, router.models
        )
        curve.append({"events": events, **point})

    def refit(counts: Feedback) -> TableRouter:
        return router.with_quality(
            pessimistic_quality(prior, counts, cfg.prior_weight, cfg.pessimism)
        )

    def look(events: int) -> None:
        nonlocal current, adopted
        assert candidate is not None
        rows, held = log.logged(held=True)
        if len(held) < 2:
            return
        table = posterior_quality(prior, fb, cfg.prior_weight)
        est, true = guard_compare(candidate, current, rows, held, stream, cfg, table)
        ok = bool(np.isfinite(est.value) and est.lower(cfg.z) > cfg.margin)
        decisions.append(GuardDecision(events, len(held), est.value, est.lower(cfg.z), ok, true))
        if ok:
            current = candidate
            adopted = Feedback(fb.events.copy(), fb.score_sum.copy())

    order = rng.permutation(len(stream))
    done = 0
    while True:
        if marks and done >= marks[0]:
            checkpoint(done)
            while marks and marks[0] <= done:
                marks.pop(0)
        if done >= len(stream):
            break
        stop = min(done + cfg.batch, len(stream), marks[0] if marks else len(stream))
        rows = order[done:stop]
        vec = stream.vectors[rows]
        greedy = current.choose(vec, alpha=cfg.alpha)
        # The exploration policy's choice (and, for Thompson, posterior draws that estimate
        # the probability it gives any model).
        draws = None
        if cfg.explore == "thompson":
            choice = _thompson(current, everything, prior, vec, cfg, rng)[0]
            more = _thompson(current, everything, prior, vec, cfg, prop_rng, cfg.propensity_draws)
            draws = np.concatenate([choice[None, :], more])
        elif cfg.explore == "epsilon":
            flip = rng.random(rows.size) < cfg.epsilon
            other = (greedy + rng.integers(1, max(m, 2), rows.size)) % m
            choice = np.where(flip, other, greedy)
        else:
            choice = greedy
        propensity = _explore_probability(cfg, choice, greedy, draws, m)
        if cfg.guard and cfg.ab > 0 and candidate is not None:
            # Aimed exploration: a share of the requests goes to the candidate's choice and
            # as much to the tables in use, so the guard sees both where they disagree.
            challenger = candidate.choose(vec, alpha=cfg.alpha)
            u = mix_rng.random(rows.size)
            choice = np.where(u < cfg.ab, challenger, np.where(u < 2 * cfg.ab, greedy, choice))
            propensity = (
                (1.0 - 2 * cfg.ab) * _explore_probability(cfg, choice, greedy, draws, m)
                + cfg.ab * (choice == challenger)
                + cfg.ab * (choice == greedy)
            )
        explored += int((choice != greedy).sum())
        nearest = current.neighbours(vec)[0][:, 0]
        held = split_rng.random(rows.size) < cfg.holdout if cfg.guard else np.zeros(rows.size, bool)
        for r, j, c, p, h in zip(
            rows.tolist(),
            choice.tolist(),
            nearest.tolist(),
            propensity.tolist(),
            held.tolist(),
            strict=True,
        ):
            score = float(stream.quality[r, j])
            everything.add(c, j, score)
            if not h:
                fb.add(c, j, score)
            log.rows.append(r)
            log.models.append(j)
            log.scores.append(score)
            log.clusters.append(c)
            log.propensity.append(float(p))
            log.held.append(bool(h))
        done = stop
        if cfg.guard:
            candidate = refit(fb)
            if done >= next_guard or done >= len(stream):
                look(done)
                next_guard = done + cfg.guard_every
        else:
            current = refit(fb)
            adopted = fb
    return ReplayResult(curve, fb, current, log, explored, candidate, adopted, decisions)
