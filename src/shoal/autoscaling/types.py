"""The values that cross the autoscaler's boundaries: metric windows in, decisions out.

A :class:`MetricsWindow` is what a metrics source (Prometheus in a cluster, the fleet
simulator offline) observed about a fleet's models; a :class:`FleetDecision` is what the
policy (:func:`shoal.autoscaling.policy.decide`) makes of it: per model the replicas it wants
and why, in words, plus the budget's verdict and the router quality weight in force. Plain
frozen dataclasses, no I/O, so the policy stays a pure function that tests can feed by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

Direction = Literal["up", "down", "hold"]


@dataclass(frozen=True)
class ModelMetrics:
    """What was observed about one model (all replicas together). ``None``: not reported.

    - ``in_flight``: requests running or waiting in the engines, averaged over the short
      (scale-up) window.
    - ``peak_in_flight``: the highest short-window average of in-flight requests over the
      long (scale-down) window: the sustained peak, not one noisy sample.
    - ``in_flight_trend``: how fast in-flight requests grow, per second, judged from the
      arrival rate (arrivals lead in-flight): ``in_flight * (rate now / rate one window
      earlier - 1) / window``; negative when load falls.
    - ``waiting``: requests queued for a batch slot (part of ``in_flight``).
    - ``request_rate``: requests answered per second over the short window.
    - ``demand_rate``: requests per second the router ranked this model first (it keeps
      counting while the model is cold and its traffic goes elsewhere).
    - ``ttft_p95_seconds``: p95 time to first token seen by clients over the short window.
    - ``kv_cache_usage``: highest KV-cache use of any replica, 0..1 (engines that report it).
    - ``observed_at``: time of the newest engine sample; older than the stale limit: hold.
    - ``arrival_rate``: requests per second the router ranked this model first over the
      short window (the newest arrival rate; ``demand_rate`` is over the rate window).
    - ``arrival_trend``: how fast that rate changes, in requests per second per second,
      from the short window against the one before it; 0 when the change is within the
      noise of Poisson arrival counts.
    - ``peak_arrival_rate``: the highest short-window arrival rate over the burst window
      (how bursty the model's traffic was lately).
    - ``service_seconds``: mean seconds a request holds a batch slot in an engine (Little's
      law over the rate window: requests running over requests completed per second).
    - ``latest_arrival_rate`` and ``latest_waiting``: the arrival rate and the queue over
      the latest window (the newer half of the short window, ``MetricsWindow.latest_seconds``
      long): a step in the traffic shows there in full one evaluation before the short
      window's average catches up.
    - ``spend_per_hour``: what the model's answers cost per hour (USD), from the ingress's
      ``shoal_cost_usd_total``.
    """

    in_flight: float | None = None
    peak_in_flight: float | None = None
    in_flight_trend: float | None = None
    waiting: float | None = None
    request_rate: float | None = None
    demand_rate: float | None = None
    ttft_p95_seconds: float | None = None
    kv_cache_usage: float | None = None
    observed_at: datetime | None = None
    arrival_rate: float | None = None
    arrival_trend: float | None = None
    peak_arrival_rate: float | None = None
    service_seconds: float | None = None
    latest_arrival_rate: float | None = None
    latest_waiting: float | None = None
    #: USD per hour the model's answered requests cost over the rate window
    #: (``shoal_cost_usd_total``); the fleet budget counts it for models served outside the
    #: fleet, which have no replicas to price.
    spend_per_hour: float | None = None


@dataclass(frozen=True)
class MetricsWindow:
    """Metrics of a fleet's models at ``collected_at``; ``error`` when the source failed."""

    collected_at: datetime
    models: Mapping[str, ModelMetrics] = field(default_factory=dict)
    error: str | None = None
    #: Length of the short window (``ModelMetrics.arrival_rate``, ``waiting``), in seconds.
    short_seconds: float = 30.0
    #: Length of the latest window (``ModelMetrics.latest_*``), in seconds.
    latest_seconds: float = 15.0
    #: Per model, the model its spilled requests went to most over the burst window (the
    #: ingress's ``shoal_spilled_requests_total``); absent: none spilled (spillover's bridge,
    #: :func:`shoal.autoscaling.policy.bridge_spill`).
    spill_takers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelState:
    """What the autoscaler knows about a model before deciding.

    ``replicas`` is the count in force (set by the autoscaler, or observed when it starts);
    ``ready`` how many of them serve (None: unknown, taken as all). The two times pace
    scale-ups and scale-downs (the tier's cooldowns).
    """

    replicas: int
    ready: int | None = None
    last_scale_up: datetime | None = None
    last_change: datetime | None = None


@dataclass(frozen=True)
class ModelDecision:
    """The policy's verdict for one model."""

    model: str
    tier: str
    current: int
    desired: int
    reason: str
    #: What load and SLOs asked for before the budget had its say.
    wanted: int
    #: Whether the budget took replicas from this model.
    budget_limited: bool = False

    @property
    def direction(self) -> Direction:
        """Whether this is a scale-up, a scale-down or no change."""
        if self.desired > self.current:
            return "up"
        if self.desired < self.current:
            return "down"
        return "hold"


@dataclass(frozen=True)
class FleetDecision:
    """The policy's verdict for a whole fleet, one evaluation."""

    models: list[ModelDecision]
    #: Cost per hour of the desired replicas.
    cost_per_hour: Decimal
    #: Cost per hour of what load and SLOs asked for (above ``cost_per_hour`` when capped).
    wanted_cost_per_hour: Decimal
    budget_per_hour: Decimal | None
    budget_binding: bool
    #: Router quality weight to use; None leaves the policy's own alpha in force.
    effective_alpha: Decimal | None
    #: The fleet-level verdict in words (budget, alpha).
    summary: str

    def by_model(self) -> dict[str, ModelDecision]:
        """Decisions keyed by model name."""
        return {d.model: d for d in self.models}

    @property
    def changes(self) -> list[ModelDecision]:
        """Decisions that change a replica count."""
        return [d for d in self.models if d.desired != d.current]

    @property
    def budget_utilisation(self) -> float | None:
        """Desired cost as a fraction of the budget (None without a budget)."""
        if not self.budget_per_hour:
            return None
        return float(self.cost_per_hour / self.budget_per_hour)
