"""What the ingress enforces and how it is sized: request limits, timeouts, ingress replicas.

Part of the serving contract: the operator renders these into ``serveConfigV2`` (inside
:class:`~shoal.contract.serve.BuildArgs`), and the Ray Serve app's ingress and model servers
read them back. Pure Pydantic models; nothing here imports Ray.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServingLimits(BaseModel):
    """Request limits and downstream timeouts enforced by the ingress."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_tokens: int = Field(
        default=4096, ge=1, description="Largest max_tokens a request may ask for (400 above)."
    )
    default_max_tokens: int = Field(
        default=512,
        ge=1,
        description="max_tokens used when a chat request sets none (capped at max_tokens "
        "unless set explicitly).",
    )
    first_token_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long the ingress waits for a model's first chunk before trying the "
        "next model.",
    )
    request_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Upper bound on one downstream generation."
    )
    unhealthy_cooldown_seconds: float = Field(
        default=5.0,
        ge=0,
        description="After a failure, how long a model is skipped before it is tried again.",
    )
    health_probe_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the ingress probes every model deployment."
    )
    max_fallbacks: int = Field(
        default=3, ge=0, description="Most models tried after the first one for one request."
    )
    stream_interval_ms: float = Field(
        default=50.0,
        ge=0,
        description="Streaming: after the first chunk (sent at once), a model replica sends "
        "what it generated at most every this many milliseconds, and the last chunk at once. "
        "Fewer, larger messages; time to first token and to the last token are unchanged.",
    )
    retry_after_seconds: int = Field(
        default=2, ge=1, description="Retry-After sent with a 503 when no model can take a request."
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> ServingLimits:
        if "default_max_tokens" not in self.model_fields_set:
            self.default_max_tokens = min(self.default_max_tokens, self.max_tokens)
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("default_max_tokens may not exceed max_tokens")
        return self


class IngressSettings(BaseModel):
    """Sizing of the ingress ("router") deployment."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(default=1, ge=1, le=64, description="Ingress replicas.")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs each ingress replica reserves.")
    max_ongoing_requests: int = Field(
        default=1024, ge=1, description="Concurrent requests one ingress replica accepts."
    )
