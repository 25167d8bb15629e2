"""Replicas of one model in virtual time, timed by the simulated engine's latency model.

The fleet simulator needs hours of traffic in seconds of CPU, so it does not run
:class:`~shoal.serving.engines.latency.BatchScheduler` step by step; it uses the same
:class:`~shoal.serving.engines.latency.LatencyModel` at request granularity:

- a replica runs at most ``max_batch`` requests at once (continuous batching); beyond that,
  requests wait in the model's FIFO queue (Ray Serve queues at the caller the same way);
- a request admitted next to ``running`` others waits for the step in progress (half a step
  on average) and gets its first token after one prefill step,
  ``LatencyModel.ttft_seconds(prompt_tokens, running)``, and its remaining tokens at
  ``LatencyModel.inter_token_seconds(running + 1)`` each;
- its prefill lengthens that step for the whole batch: every request already running on the
  replica finishes that much later (prefills stall decodes, as in the engine).

So time to first token grows with queueing and with batch size exactly as in the engine;
what the request-level view leaves out is that a request's decode speed changes when the
batch grows or shrinks after it was admitted (it keeps the speed of its admission, plus the
prefill stalls of later admissions).
``tests/unit/sim`` checks the two against each other on steady loads.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from shoal.serving.engines.latency import LatencyModel


@dataclass(frozen=True)
class Request:
    """One request of a trace."""

    id: int
    arrival: float
    topic: str
    prompt: int  # index into the topic's prompt pool
    prompt_tokens: int
    output_tokens: int


@dataclass(eq=False)
class Replica:
    """One replica: billed from ``started`` on, serving from ``ready_at`` on."""

    id: int
    started: float
    ready_at: float
    running: int = 0
    #: KV-cache tokens the running requests hold (prompt plus, on average, half the answer).
    kv_tokens: int = 0
    #: Prefill seconds spent in this replica's steps so far: every running request waits
    #: them out (a prefill shares its step with the batch's decodes).
    stall: float = 0.0
    draining: bool = False
    stopped: float | None = None


@dataclass(eq=False)
class ModelPool:
    """The replicas of one model and its queue of requests waiting for a batch slot."""

    name: str
    tier: str
    latency: LatencyModel
    cold_start_seconds: float
    price_per_hour: float
    slo_seconds: float
    #: Replicas not stopped yet: starting, serving or draining.
    replicas: list[Replica] = field(default_factory=list)
    #: Replicas that take requests (ready, not draining).
    serving: list[Replica] = field(default_factory=list)
    queue: deque[tuple[Request, float]] = field(default_factory=deque)
    #: (time of first token, TTFT) of answered requests, oldest first (trimmed by the
    #: simulator's recorder).
    first_tokens: deque[tuple[float, float]] = field(default_factory=deque)
    #: (time of finish, seconds from admission to finish) of answered requests, oldest first
    #: (what the engine's request-duration histograms show; trimmed like ``first_tokens``).
    services: deque[tuple[float, float]] = field(default_factory=deque)
    #: Billing of replicas that are gone: replica-seconds.
    billed_seconds: float = 0.0
    #: Moving average of the seconds a request holds a batch slot (what the ingress
    #: measures for spillover's estimate); None until a request finished.
    service_estimate: float | None = None
    #: ``latency.inter_token_seconds(k)`` for every batch size ``k`` (computed once).
    _itl: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._itl = [self.latency.inter_token_seconds(k) for k in range(self.latency.max_batch + 2)]

    def count(self) -> int:
        """Replicas in force (starting or serving, not draining)."""
        return sum(1 for r in self.replicas if not r.draining)

    def running(self) -> int:
        return sum(r.running for r in self.replicas)

    def observe_service(self, seconds: float, weight: float = 0.05) -> None:
        """Fold one finished request's seconds in a batch slot into ``service_estimate``."""
        before = self.service_estimate
        self.service_estimate = seconds if before is None else before + weight * (seconds - before)

    def free_replica(self) -> Replica | None:
        """The least busy serving replica with a free batch slot."""
        best = None
        limit = self.latency.max_batch
        for r in self.serving:
            if r.running < limit and (best is None or r.running < best.running):
                best = r
        return best

    def timing(self, running: int, prompt_tokens: int, output_tokens: int) -> tuple[float, float]:
        """(first token after admission, finish after admission) next to ``running`` others."""
        # A busy replica is mid-step when a request arrives: on average half a step to wait.
        wait = 0.5 * self._itl[running] if running else 0.0
        first = wait + self.latency.ttft_seconds(prompt_tokens, running)
        return first, first + max(0, output_tokens - 1) * self._itl[running + 1]

    def prefill_seconds(self, prompt_tokens: int) -> float:
        """What prefilling ``prompt_tokens`` adds to a step (and so to every running request)."""
        return self.latency.step_seconds(0, prompt_tokens) - self.latency.step_seconds(0, 0)

    def cost(self, now: float) -> float:
        """USD spent on this model's replicas up to ``now``."""
        seconds = self.billed_seconds + sum(now - r.started for r in self.replicas)
        return seconds / 3600.0 * self.price_per_hour
