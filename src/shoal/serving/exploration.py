"""Safe exploration: now and then, a near-best model instead of the router's first choice.

Feedback can only teach the router about models it sends requests to. With a policy's
``exploration`` set, :class:`Explorer` moves a model whose blended score is within
``qualityMargin`` of the first choice's to the front, for at most ``percent`` of routed
requests and, where ``maxCostPerHour`` is set, while the explored requests' estimated cost
(each model's recent cost per request) stays within that budget over the last hour. Each
ingress replica holds its share of the budget (the budget over the ingress replicas). Off by
default; every explored request says so in the ``x-shoal-explored`` header and in
``shoal_explorations_total``, and every routed request under exploration carries its
propensity (the probability the decision gave the model it went to) in
``x-shoal-propensity``, which off-policy estimates need. The randomness and the clock are
passed in: pure.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from decimal import Decimal

from shoal.api.v1alpha1.policy import ExplorationSpec


class Explorer:
    """Decides, request by request, whether to explore and which model (module docstring)."""

    def __init__(
        self,
        spec: ExplorationSpec,
        replicas: int = 1,
        rng: Callable[[], float] = random.random,
        pick: Callable[[list[str]], str] = random.choice,
    ) -> None:
        self.share = spec.percent / 100.0
        self.margin = float(Decimal(spec.quality_margin))
        cap = spec.max_cost_per_hour
        self.budget = None if cap is None else float(Decimal(cap)) / max(1, replicas)
        self._rng = rng
        self._pick = pick
        self._spent: deque[tuple[float, float]] = deque()  # (when, estimated USD)

    def _spent_last_hour(self, now: float) -> float:
        while self._spent and self._spent[0][0] < now - 3600.0:
            self._spent.popleft()
        return sum(cost for _, cost in self._spent)

    def choose(
        self,
        ranked: list[str],
        scores: dict[str, float] | None,
        now: float,
        cost_of: Callable[[str], float],
    ) -> str | None:
        """The model to explore for this request (None: keep the ranking)."""
        return self.decide(ranked, scores, now, cost_of)[0]

    def decide(
        self,
        ranked: list[str],
        scores: dict[str, float] | None,
        now: float,
        cost_of: Callable[[str], float],
    ) -> tuple[str | None, float]:
        """The model to explore (None: keep the ranking) and the *propensity* of the model
        the request goes to: the probability this decision gave it. An explored model had
        ``percent / near`` (one of the ``near`` models within the margin); the first choice
        ``1 - percent * allowed / near`` (``allowed``: the near models the cost budget lets
        through now). Off-policy estimates weigh the answer's feedback by its inverse."""
        if self.share <= 0 or not scores or len(ranked) < 2:
            return None, 1.0
        best = scores.get(ranked[0])
        near = (
            []
            if best is None
            else [m for m in ranked[1:] if m in scores and scores[m] >= best - self.margin]
        )
        allowed = near
        if self.budget is not None and near:
            room = self.budget - self._spent_last_hour(now)
            allowed = [m for m in near if cost_of(m) <= room]
        keep = 1.0 - self.share * len(allowed) / len(near) if near else 1.0
        if self._rng() >= self.share or not near:
            return None, keep
        model = self._pick(near)
        if model not in allowed:
            return None, keep
        if self.budget is not None:
            self._spent.append((now, cost_of(model)))
        return model, self.share / len(near)


def explored(ranked: list[str], model: str) -> list[str]:
    """``ranked`` with ``model`` first (the rest keep their order, for fallback)."""
    return [model, *(m for m in ranked if m != model)]
