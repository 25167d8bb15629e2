"""Pricing of ``shoal calibrate``: what one answer of a model cost, in USD.

Two ways, per model:

- per replica-hour (the fleet's tiers, ``costPerReplicaHour``): the answer's measured time on
  a replica, ``cost_per_replica_hour * seconds / 3600`` (one request at a time: an upper
  bound where a replica serves several at once);
- per token, where prices are declared (USD per million prompt and completion tokens):
  ``(prompt_tokens * input + completion_tokens * output) / 1e6``.

Pure functions; :func:`fleet_prices` reads a ``ModelFleet`` spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from shoal.api.v1alpha1.fleet import ModelFleetSpec
from shoal.contract.cost import model_price


@dataclass(frozen=True)
class Price:
    """One model's price: per replica-hour, or per million tokens (in and out)."""

    per_replica_hour: float | None = None
    per_million_input: float | None = None
    per_million_output: float | None = None

    def cost(self, seconds: float, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one answer that took ``seconds`` and used these tokens."""
        if self.per_million_input is not None or self.per_million_output is not None:
            return (
                prompt_tokens * (self.per_million_input or 0.0)
                + completion_tokens * (self.per_million_output or 0.0)
            ) / 1e6
        if self.per_replica_hour is not None:
            return self.per_replica_hour * max(0.0, seconds) / 3600.0
        return 0.0


def fleet_prices(spec: ModelFleetSpec) -> dict[str, Price]:
    """Each model's price: per replica-hour from its tier, or, for a model served outside
    the fleet (engine openai), per million tokens from ``external.price``
    (:func:`shoal.contract.cost.model_price`, the ingress's own)."""
    out = {}
    for m in spec.models:
        p = model_price(spec, m)
        if p.per_token:
            out[m.name] = Price(
                per_million_input=p.per_million_input, per_million_output=p.per_million_output
            )
        else:
            out[m.name] = Price(per_replica_hour=p.per_replica_hour)
    return out


def parse_token_price(text: str) -> tuple[str, Price]:
    """``model=IN:OUT`` (USD per million prompt and completion tokens) -> (model, Price)."""
    model, sep, rest = text.partition("=")
    inp, sep2, out = rest.partition(":")
    if not sep or not sep2 or not model:
        raise ValueError(f"token price {text!r}: expected MODEL=IN:OUT (USD per million tokens)")
    try:
        a, b = Decimal(inp), Decimal(out)
    except InvalidOperation:
        raise ValueError(f"token price {text!r}: IN and OUT must be decimal numbers") from None
    if a < 0 or b < 0 or not a.is_finite() or not b.is_finite():
        raise ValueError(f"token price {text!r}: prices must be finite and >= 0")
    return model, Price(per_million_input=float(a), per_million_output=float(b))


def merge_prices(base: Mapping[str, Price], overrides: Mapping[str, Price]) -> dict[str, Price]:
    """``base`` with per-token ``overrides`` taking precedence model by model."""
    return {**base, **overrides}
