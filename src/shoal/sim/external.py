"""Models served outside the fleet, in the simulator: answered at once, billed per token.

An :class:`ExternalEndpoint` stands for a frontier API or another team's pool: it has no
replicas for a controller to size, takes every request the router sends it (its capacity is
someone else's), answers its first token after a fixed delay, and bills each request's prompt
and completion tokens at its price (:class:`shoal.contract.cost.ModelPrice`, the ingress's own
arithmetic). Its recent spend feeds the autoscaler's metrics window as ``spend_per_hour``, so
that the fleet budget counts it as the operator's does. Used by
:class:`shoal.sim.simulator.Simulator`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from shoal.api.v1alpha1 import ModelFleetSpec
from shoal.contract.cost import ModelPrice, model_price


@dataclass(eq=False)
class ExternalEndpoint:
    """One model served outside the fleet (see the module docstring)."""

    name: str
    tier: str
    price: ModelPrice
    first_token_seconds: float
    slo_seconds: float
    #: USD billed so far, and requests answered.
    spend_usd: float = 0.0
    answered: int = 0
    #: (time, USD) of recent answers, oldest first (for the spend rate).
    bills: deque[tuple[float, float]] = field(default_factory=deque)

    def serve(self, now: float, prompt_tokens: int, output_tokens: int) -> float:
        """Bill one request answered at ``now``; its cost in USD."""
        cost = self.price.cost(0.0, prompt_tokens, output_tokens)
        self.spend_usd += cost
        self.answered += 1
        self.bills.append((now, cost))
        return cost

    def spend_per_hour(self, now: float, window: float) -> float:
        """USD per hour billed over the last ``window`` seconds."""
        while self.bills and self.bills[0][0] < now - max(window, 900.0):
            self.bills.popleft()
        recent = sum(c for t, c in self.bills if t >= now - window)
        return recent * 3600.0 / window if window > 0 else 0.0


def external_endpoints(spec: ModelFleetSpec, first_token_seconds: float) -> list[ExternalEndpoint]:
    """An endpoint for every external model of ``spec``."""
    tiers = {t.name: t for t in spec.tiers}
    return [
        ExternalEndpoint(
            name=m.name,
            tier=m.tier,
            price=model_price(spec, m),
            first_token_seconds=first_token_seconds,
            slo_seconds=tiers[m.tier].slo.ttft_p95_milliseconds / 1000.0,
        )
        for m in spec.external_models()
    ]
