"""Models served outside the fleet, and the reference a fleet's savings are measured against.

A ``ModelFleet`` model with ``engine: openai`` is not run by Shoal: it is an OpenAI-compatible
endpoint somewhere else (a frontier API, a large model on another team's vLLM, KServe or llm-d
pool) that the ingress calls over HTTP. It has no Ray deployment and no replicas, and is
priced per token (:class:`TokenPrice`), where the fleet's own models are priced per
replica-hour. Its API key comes from a Secret its owner marked for Shoal
(:data:`MODEL_KEY_LABEL` and the allowed-hosts annotation; see
:mod:`shoal.operator.sources`).

:class:`SavingsSpec` names what the fleet's spend is compared with: one of its external models,
or a bare price per million tokens ("what sending everything to the big model would cost").

Imported by :mod:`shoal.api.v1alpha1.fleet`; nothing of ours below ``api``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from pydantic import Field

from shoal.api.v1alpha1.common import GROUP, ApiModel, HttpUrl, Money, Name, Rule
from shoal.api.v1alpha1.policy import SecretKeyRef

#: Label a Secret's owner sets (to "true") to let Shoal send its key to an external model.
MODEL_KEY_LABEL = f"{GROUP}/model-key"


class TokenPrice(ApiModel):
    """A price per million tokens, in USD, as decimal strings."""

    input_per_million: Money = Field(
        description='USD per million prompt (input) tokens, e.g. "2.50".'
    )
    output_per_million: Money = Field(
        description='USD per million completion (output) tokens, e.g. "10.00".'
    )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """USD for this many prompt and completion tokens."""
        return (
            Decimal(prompt_tokens) * Decimal(self.input_per_million)
            + Decimal(completion_tokens) * Decimal(self.output_per_million)
        ) / Decimal(1_000_000)


class ExternalModel(ApiModel):
    """An OpenAI-compatible endpoint the fleet routes to but does not run."""

    base_url: HttpUrl = Field(
        description="OpenAI-compatible base URL, up to and including /v1, e.g. "
        "https://api.openai.com/v1 or http://big-pool.llm.svc:8000/v1.",
    )
    model: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$",
        description="Model name the endpoint knows, sent as `model` in each request "
        "(e.g. gpt-4o); clients still name the fleet's own name for it.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key (the fleet's namespace) holding the endpoint's API key, sent "
        f"as a bearer token. Used only when its owner labelled the Secret {MODEL_KEY_LABEL}="
        f'"true" and named the endpoint\'s host in its annotation {GROUP}/allowed-hosts. '
        "None: no key is sent.",
    )
    price: TokenPrice = Field(
        description="What the endpoint charges per million tokens; every request is billed "
        "from the token counts it reports."
    )
    connect_timeout_seconds: int = Field(
        default=5, ge=1, le=120, description="Seconds to open a connection to the endpoint."
    )
    first_token_timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=600,
        description="Seconds to wait for the endpoint's first token (or whole answer) before "
        "falling back.",
    )
    request_timeout_seconds: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="Seconds a whole answer may take, and the longest gap between two "
        "streamed events.",
    )
    max_concurrent_requests: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Requests in flight to the endpoint from one ingress replica; beyond "
        "it the model counts as overloaded and the ingress falls back.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.firstTokenTimeoutSeconds <= self.requestTimeoutSeconds",
            message="firstTokenTimeoutSeconds may not exceed requestTimeoutSeconds",
            check=lambda e: e.first_token_timeout_seconds <= e.request_timeout_seconds,
            field_path=".firstTokenTimeoutSeconds",
        ),
    )


class SavingsSpec(ApiModel):
    """What the fleet's spend is compared with: the cost of the same tokens at a reference
    price (one of the fleet's external models, or a price of its own)."""

    reference_model: Name | None = Field(
        default=None,
        description="An external model (engine openai) of this fleet whose price is the reference.",
    )
    reference_price: TokenPrice | None = Field(
        default=None, description="A reference price per million tokens."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.referenceModel) != has(self.referencePrice)",
            message="set exactly one of referenceModel and referencePrice",
            check=lambda s: (s.reference_model is None) != (s.reference_price is None),
            field_path=".referenceModel",
        ),
    )


class FleetSpend(ApiModel):
    """What the fleet's answered requests cost in the last hour, and what the same tokens
    would have cost at the savings reference (read from the ingress's metrics by the
    operator)."""

    last_hour_cost_usd: str = Field(
        default="0.0000",
        description="USD the fleet's answers cost in the last hour: external models' token "
        "bills plus the fleet's own models' per-request estimates.",
    )
    last_hour_external_cost_usd: str = Field(
        default="0.0000",
        description="The part of lastHourCostUsd billed by models served outside the fleet.",
    )
    last_hour_reference_cost_usd: str | None = Field(
        default=None,
        description="What the same tokens would have cost at spec.savings' reference (none "
        "without a reference).",
    )
    saved_percent: str | None = Field(
        default=None,
        description='Share of the reference\'s cost saved, in percent, e.g. "87.5" (negative: '
        "the fleet cost more than the reference).",
    )
    updated_time: datetime | None = Field(default=None, description="When it was read.")
