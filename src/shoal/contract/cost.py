"""One cost per request, in US dollars, and the savings against a reference: one definition.

Every place that prices a request reads this module: the ingress when it bills an answer
(:mod:`shoal.serving.fallback`, and through it tenants' spend and budgets and the
``shoal_cost_usd_total`` series), ``shoal calibrate`` (:mod:`shoal.routing.pricing`), the
simulator, and ``shoal usage`` and the RouterBench study when they compare spend with a
reference (:class:`Savings`).

- A model served outside the fleet (``engine: openai``) is billed what its endpoint charges:
  ``(prompt_tokens * input + completion_tokens * output) / 1e6`` (:meth:`ModelPrice.cost`).
- A model the fleet runs itself is priced per replica-hour; one request's share is an
  **estimate**: the replica time it held, divided among the requests the replica served at
  once, ``cost_per_replica_hour * seconds / 3600 / sharing``. Over an hour of steady load the
  estimates add up to what the replicas that served it cost (idle replicas cost money too;
  that shows in the fleet's ``costPerHour``, not in any request).
- The reference (``spec.savings``) prices the very same tokens at a per-token price.

Pure; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from shoal.api.v1alpha1 import ModelFleetSpec, ModelSpec
from shoal.api.v1alpha1.external import TokenPrice

#: The ingress's counter of what answered requests would have cost at the reference, per
#: model (beside ``shoal_cost_usd_total``), and its per-tenant twin.
REFERENCE_COST_METRIC = "shoal_reference_cost_usd_total"
TENANT_REFERENCE_COST_METRIC = "shoal_tenant_reference_cost_usd_total"


@dataclass(frozen=True)
class ModelPrice:
    """What one model's requests cost: per million tokens (external models) or per
    replica-hour (the fleet's own, estimated per request)."""

    per_replica_hour: float = 0.0
    per_million_input: float | None = None
    per_million_output: float | None = None

    @property
    def per_token(self) -> bool:
        """Whether requests are billed per token (an external model)."""
        return self.per_million_input is not None or self.per_million_output is not None

    def cost(
        self, seconds: float, prompt_tokens: int, completion_tokens: int, sharing: float = 1.0
    ) -> float:
        """USD of one answer that held a replica ``seconds`` alongside ``sharing`` requests
        (ignored for per-token prices) and used these tokens."""
        if self.per_token:
            return (
                max(0, prompt_tokens) * (self.per_million_input or 0.0)
                + max(0, completion_tokens) * (self.per_million_output or 0.0)
            ) / 1e6
        return self.per_replica_hour * max(0.0, seconds) / 3600.0 / max(1.0, sharing)


def token_price(price: TokenPrice) -> ModelPrice:
    """A per-token :class:`ModelPrice` from the API's decimal strings."""
    return ModelPrice(
        per_million_input=float(Decimal(price.input_per_million)),
        per_million_output=float(Decimal(price.output_per_million)),
    )


def model_price(spec: ModelFleetSpec, model: ModelSpec) -> ModelPrice:
    """How ``model`` of the fleet ``spec`` is priced."""
    if model.external is not None:
        return token_price(model.external.price)
    tier = next((t for t in spec.tiers if t.name == model.tier), None)
    hourly = float(Decimal(tier.cost_per_replica_hour)) if tier is not None else 0.0
    return ModelPrice(per_replica_hour=hourly)


def fleet_model_prices(spec: ModelFleetSpec) -> dict[str, ModelPrice]:
    """Every model's price, by name."""
    return {m.name: model_price(spec, m) for m in spec.models}


def reference_price(spec: ModelFleetSpec) -> ModelPrice | None:
    """The per-token price the fleet's savings are measured against (None: no reference)."""
    savings = spec.savings
    if savings is None:
        return None
    if savings.reference_price is not None:
        return token_price(savings.reference_price)
    for m in spec.models:
        if m.name == savings.reference_model and m.external is not None:
            return token_price(m.external.price)
    return None


@dataclass(frozen=True)
class Savings:
    """Spend against what the reference would have cost for the same tokens."""

    spend_usd: float
    reference_usd: float

    @property
    def saved_usd(self) -> float:
        """What the fleet saved (negative: it cost more than the reference)."""
        return self.reference_usd - self.spend_usd

    @property
    def ratio(self) -> float | None:
        """Spend as a fraction of the reference's cost (None when the reference cost nothing)."""
        return self.spend_usd / self.reference_usd if self.reference_usd > 0 else None

    @property
    def saved_percent(self) -> float | None:
        """Share of the reference's cost saved, in percent (None without a reference cost)."""
        ratio = self.ratio
        return None if ratio is None else 100.0 * (1.0 - ratio)

    def describe(self) -> str:
        """In words, e.g. "$1.20 against $9.80 at the reference: 87.8% saved"."""
        pct = self.saved_percent
        tail = f": {pct:.1f}% saved" if pct is not None else ""
        return f"${self.spend_usd:.4f} against ${self.reference_usd:.4f} at the reference{tail}"

    def __add__(self, other: Savings) -> Savings:
        return Savings(self.spend_usd + other.spend_usd, self.reference_usd + other.reference_usd)


def savings_of(
    spends: list[float], tokens: list[tuple[int, int]], reference: ModelPrice
) -> Savings:
    """Savings of requests that cost ``spends`` and used ``tokens`` (prompt, completion)
    each, against the per-token ``reference``."""
    ref = sum(reference.cost(0.0, p, c) for p, c in tokens)
    return Savings(float(sum(spends)), float(ref))
