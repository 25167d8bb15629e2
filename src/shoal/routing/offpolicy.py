"""Off-policy estimates: how a routing policy *would* have scored on logged bandit feedback.

Logged feedback reveals one model's score per request: the model the logging policy (the
router in use, with its exploration) chose, with the probability it gave that choice (its
*propensity*). A new router's value on the same requests can then be estimated without
serving it:

- **IPS** (inverse propensity scoring): the mean of ``pi(a_i | x_i) / p_i * r_i``; unbiased
  when every propensity is right and positive wherever the target acts;
- **SNIPS** (self-normalised IPS): the same divided by the mean weight; a little biased,
  much less variable when weights are large;
- **DR** (doubly robust): a reward model's prediction for the target's choice, corrected by
  the propensity-weighted residual of the logged choice; unbiased when either the reward
  model or the propensities are right, and as variable as the residuals, not the scores.

:func:`compare` estimates the *difference* of two policies on the same events (paired,
so most of the noise cancels) with a normal lower confidence bound: the refit guard adopts a
refit only when that bound is above a margin. :func:`compare_tabulated` is the same IPS
difference from per-(context, action) sums, for deterministic per-cluster routers: the form
the serving layer's held-out feedback counters have. Pure numpy; called by
:mod:`shoal.routing.replay` (the guard), :mod:`shoal.routing.learn` (the honesty report) and
the operator's refit guard (:mod:`shoal.routing.refit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
Method = Literal["ips", "snips", "dr"]

#: One-sided 95% normal quantile: the default of the lower confidence bounds.
Z95 = 1.6448536269514722


@dataclass(frozen=True)
class Logged:
    """Logged bandit events: the chosen model ``actions`` (n,), its ``rewards`` (n,) in
    [0, 1] and the logging policy's ``propensity`` (n,) of that choice, in (0, 1]."""

    actions: npt.NDArray[np.int64]
    rewards: F64
    propensity: F64

    def __post_init__(self) -> None:
        n = self.actions.shape[0]
        if self.rewards.shape != (n,) or self.propensity.shape != (n,):
            raise ValueError(
                f"actions, rewards and propensities must have one value per event, got "
                f"{self.actions.shape}, {self.rewards.shape}, {self.propensity.shape}"
            )
        if n and not (np.all(self.propensity > 0) and np.all(self.propensity <= 1 + 1e-9)):
            raise ValueError("propensities must lie in (0, 1]")

    @staticmethod
    def of(actions: Any, rewards: Any, propensity: Any) -> Logged:
        """From array-likes."""
        return Logged(
            np.asarray(actions, dtype=np.int64),
            np.asarray(rewards, dtype=np.float64),
            np.asarray(propensity, dtype=np.float64),
        )

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass(frozen=True)
class Estimate:
    """A policy value (or a difference of two) with its standard error and ``n`` events."""

    value: float
    stderr: float
    n: int

    def lower(self, z: float = Z95) -> float:
        """The normal lower confidence bound ``value - z * stderr``."""
        return self.value - z * self.stderr

    def upper(self, z: float = Z95) -> float:
        """The normal upper confidence bound ``value + z * stderr``."""
        return self.value + z * self.stderr


def one_hot(choice: Any, models: int) -> F64:
    """A deterministic policy's choices ``(n,)`` as action probabilities ``(n, models)``."""
    c = np.asarray(choice, dtype=np.int64)
    out = np.zeros((c.size, models))
    out[np.arange(c.size), c] = 1.0
    return out


def _target_prob(log: Logged, target: F64) -> F64:
    t = np.asarray(target, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != len(log):
        raise ValueError(f"target must be (events, models), got {t.shape} for {len(log)} events")
    out: F64 = t[np.arange(len(log)), log.actions]
    return out


def _terms(log: Logged, target: F64, method: Method, reward_model: F64 | None) -> F64:
    """Per-event terms whose mean is the IPS or DR estimate."""
    w = _target_prob(log, target) / log.propensity
    if method == "dr":
        if reward_model is None:
            raise ValueError("the doubly robust estimate needs a reward model")
        q = np.asarray(reward_model, dtype=np.float64)
        if q.shape != target.shape:
            raise ValueError(f"reward model has shape {q.shape}, the target {target.shape}")
        direct = (target * q).sum(axis=1)
        out: F64 = direct + w * (log.rewards - q[np.arange(len(log)), log.actions])
        return out
    terms: F64 = w * log.rewards
    return terms


def _mean(terms: F64) -> Estimate:
    n = terms.size
    if n == 0:
        return Estimate(float("nan"), float("inf"), 0)
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return Estimate(float(terms.mean()), se, n)


def estimate(
    log: Logged, target: Any, *, method: Method = "dr", reward_model: Any | None = None
) -> Estimate:
    """The value (mean reward per event) of the policy ``target`` ``(n, m)`` on ``log``.

    ``reward_model`` ``(n, m)`` (predicted reward of every model for every event) is needed by
    ``dr``. SNIPS's standard error is the delta method's.
    """
    t = np.asarray(target, dtype=np.float64)
    if len(log) == 0:
        return Estimate(float("nan"), float("inf"), 0)
    if method == "snips":
        w = _target_prob(log, t) / log.propensity
        total = float(w.sum())
        if len(log) == 0 or total <= 0:
            return Estimate(float("nan"), float("inf"), len(log))
        value = float((w * log.rewards).sum() / total)
        resid = w * (log.rewards - value) / w.mean()
        return Estimate(value, _mean(resid).stderr, len(log))
    rm = None if reward_model is None else np.asarray(reward_model, dtype=np.float64)
    return _mean(_terms(log, t, method, rm))


def compare(
    log: Logged,
    new: Any,
    old: Any,
    *,
    method: Method = "dr",
    reward_model: Any | None = None,
) -> Estimate:
    """The estimated value of ``new`` minus that of ``old`` (both ``(n, m)``) on ``log``.

    Paired over the same events: where the two policies act alike the terms cancel exactly,
    so the standard error comes from the events where they differ.
    """
    n_, o_ = np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64)
    if method == "snips":
        wn = _target_prob(log, n_) / log.propensity
        wo = _target_prob(log, o_) / log.propensity
        if len(log) == 0 or wn.sum() <= 0 or wo.sum() <= 0:
            return Estimate(float("nan"), float("inf"), len(log))
        vn = float((wn * log.rewards).sum() / wn.sum())
        vo = float((wo * log.rewards).sum() / wo.sum())
        resid = wn * (log.rewards - vn) / wn.mean() - wo * (log.rewards - vo) / wo.mean()
        return Estimate(vn - vo, _mean(resid).stderr, len(log))
    rm = None if reward_model is None else np.asarray(reward_model, dtype=np.float64)
    return _mean(_terms(log, n_, method, rm) - _terms(log, o_, method, rm))


def compare_tabulated(
    events: float,
    weighted: Any,
    weighted_sq: Any,
    new: Any,
    old: Any,
) -> Estimate:
    """:func:`compare`'s paired IPS difference of two *deterministic per-context* policies,
    from sums instead of events: what the serving layer's counters hold.

    ``events`` is the number of logged events (every context and action of the sample),
    ``weighted[c, m]`` the sum of ``reward / propensity`` and ``weighted_sq[c, m]`` the sum
    of its square over the events of context ``c`` answered by action ``m``; ``new[c]`` and
    ``old[c]`` the action each policy takes in context ``c``. The result equals
    ``compare(log, one_hot(new[ctx]), one_hot(old[ctx]), method="ips")`` on the events
    themselves (the terms of an event are ``(1[a = new(c)] - 1[a = old(c)]) r / p``, so their
    sum and sum of squares need only those two sums per cell).
    """
    s1 = np.asarray(weighted, dtype=np.float64)
    s2 = np.asarray(weighted_sq, dtype=np.float64)
    n = float(events)
    if s1.ndim != 2 or s2.shape != s1.shape:
        raise ValueError(f"weighted sums must be (contexts, actions), got {s1.shape}, {s2.shape}")
    if n <= 0:
        return Estimate(float("nan"), float("inf"), 0)
    k = one_hot(new, s1.shape[1]) - one_hot(old, s1.shape[1])
    if k.shape != s1.shape:
        raise ValueError(f"policies choose for {k.shape[0]} contexts, the sums hold {s1.shape[0]}")
    total = float((k * s1).sum())
    squares = float((k * k * s2).sum())
    mean = total / n
    if n <= 1:
        return Estimate(mean, float("inf"), round(n))
    var = max(0.0, (squares - n * mean * mean) / (n - 1))
    return Estimate(mean, float(np.sqrt(var / n)), round(n))


def naive(log: Logged, target: Any) -> float:
    """The mean logged reward where the logging choice agrees with ``target``'s most likely
    model, unweighted: what reading the feedback without propensities says (biased)."""
    t = np.asarray(target, dtype=np.float64)
    agree = t.argmax(axis=1) == log.actions
    return float(log.rewards[agree].mean()) if agree.any() else float("nan")
