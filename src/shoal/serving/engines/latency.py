"""The simulator's latency model: continuous batching as vLLM does it, as pure code.

:class:`LatencyModel` says how long one engine step takes given the sequences decoding in it
and the prompt tokens prefilled in it. :class:`BatchScheduler` is a deterministic,
clock-free continuous-batching scheduler over that model: a bounded batch, a bounded FIFO
queue, prefill before the first token, one token per running sequence per step. So time to
first token grows with queueing, with concurrency (bigger steps) and with prompt length
(longer prefill), and inter-token latency grows with the batch size.

Nothing here sleeps or reads a clock: the simulated engine (:mod:`.simulated`) drives a
scheduler in real time with ``asyncio.sleep``; the fleet simulator can drive the same
scheduler on a virtual clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LatencyModel:
    """Duration of one engine step (all times in seconds).

    ``step = base + per_sequence * decoding + per_prefill_token * prefill_tokens``. A
    model with ``per_sequence = per_prefill_token = 0`` has fixed latency: every step takes
    ``base``, whatever the load (used by the serving benchmark).
    """

    base_step_seconds: float = 0.012
    per_sequence_seconds: float = 0.0004
    per_prefill_token_seconds: float = 0.00004
    max_batch: int = 64
    max_waiting: int = 512
    max_prefill_tokens_per_step: int = 8192
    kv_cache_tokens: int = 262_144

    def __post_init__(self) -> None:
        if self.base_step_seconds <= 0:
            raise ValueError("base_step_seconds must be > 0")
        if self.per_sequence_seconds < 0 or self.per_prefill_token_seconds < 0:
            raise ValueError("per-sequence and per-token costs must be >= 0")
        if self.max_batch < 1 or self.max_waiting < 0 or self.max_prefill_tokens_per_step < 1:
            raise ValueError("max_batch and max_prefill_tokens_per_step must be >= 1")
        if self.kv_cache_tokens < 1:
            raise ValueError("kv_cache_tokens must be >= 1")

    @classmethod
    def fixed(
        cls, step_seconds: float, *, max_batch: int = 1024, max_waiting: int = 4096
    ) -> LatencyModel:
        """A model whose every step takes ``step_seconds`` regardless of load."""
        return cls(
            base_step_seconds=step_seconds,
            per_sequence_seconds=0.0,
            per_prefill_token_seconds=0.0,
            max_batch=max_batch,
            max_waiting=max_waiting,
        )

    def step_seconds(self, decoding: int, prefill_tokens: int) -> float:
        """How long one step takes with ``decoding`` sequences and ``prefill_tokens`` to fill."""
        return (
            self.base_step_seconds
            + self.per_sequence_seconds * max(decoding, 0)
            + self.per_prefill_token_seconds * max(prefill_tokens, 0)
        )

    def ttft_seconds(self, prompt_tokens: int, running: int) -> float:
        """Time to first token of a request admitted at once next to ``running`` others."""
        return self.step_seconds(running + 1, prompt_tokens)

    def inter_token_seconds(self, running: int) -> float:
        """Time between two tokens while ``running`` sequences decode together."""
        return self.step_seconds(running, 0)


@dataclass
class _Sequence:
    request_id: str
    prompt_tokens: int
    max_tokens: int
    prefilled: int = 0
    generated: int = 0


@dataclass(frozen=True)
class TokenEvent:
    """One token produced by a step."""

    request_id: str
    index: int  # 0 for the first token of the request
    finished: bool


@dataclass(frozen=True)
class StepResult:
    """What one scheduler step did and how long it took."""

    seconds: float
    tokens: list[TokenEvent]
    admitted: list[str]


class QueueFull(Exception):
    """The scheduler's waiting queue is at ``max_waiting``: the engine is overloaded."""


@dataclass
class BatchScheduler:
    """Clock-free continuous batching over a :class:`LatencyModel`.

    Call :meth:`submit` for each arriving request and :meth:`step` repeatedly while
    :attr:`busy`; each step says how long it lasts and which tokens it produced.
    """

    model: LatencyModel = field(default_factory=LatencyModel)
    _waiting: deque[_Sequence] = field(default_factory=deque)
    _running: dict[str, _Sequence] = field(default_factory=dict)

    @property
    def running(self) -> int:
        """Sequences in the batch (prefilling or decoding)."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Requests queued for a batch slot."""
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a step has anything to do."""
        return bool(self._running or self._waiting)

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of the KV cache the running sequences hold (0..1)."""
        used = sum(s.prefilled + s.generated for s in self._running.values())
        return min(1.0, used / self.model.kv_cache_tokens)

    def submit(self, request_id: str, prompt_tokens: int, max_tokens: int) -> None:
        """Queue a request; :class:`QueueFull` when it would have to wait and the queue is
        at its bound (a request that finds a free batch slot is always accepted)."""
        free_slots = max(0, self.model.max_batch - len(self._running))
        if len(self._waiting) >= free_slots + self.model.max_waiting:
            raise QueueFull(f"{len(self._waiting)} requests waiting")
        if request_id in self._running or any(s.request_id == request_id for s in self._waiting):
            raise ValueError(f"duplicate request id {request_id!r}")
        self._waiting.append(_Sequence(request_id, max(prompt_tokens, 1), max(max_tokens, 1)))

    def cancel(self, request_id: str) -> None:
        """Drop a request wherever it is (client went away)."""
        self._running.pop(request_id, None)
        self._waiting = deque(s for s in self._waiting if s.request_id != request_id)

    def step(self) -> StepResult:
        """Admit what fits, prefill, decode one token per ready sequence."""
        admitted: list[str] = []
        while self._waiting and len(self._running) < self.model.max_batch:
            seq = self._waiting.popleft()
            self._running[seq.request_id] = seq
            admitted.append(seq.request_id)
        budget = self.model.max_prefill_tokens_per_step
        prefill = 0
        decoding = 0
        ready: list[_Sequence] = []
        for seq in self._running.values():
            if seq.prefilled < seq.prompt_tokens:
                chunk = min(seq.prompt_tokens - seq.prefilled, budget)
                budget -= chunk
                prefill += chunk
                seq.prefilled += chunk
                if seq.prefilled >= seq.prompt_tokens:
                    ready.append(seq)  # prefill done: the first token comes with this step
            else:
                decoding += 1
                ready.append(seq)
        seconds = self.model.step_seconds(decoding, prefill)
        tokens: list[TokenEvent] = []
        for seq in ready:
            index = seq.generated
            seq.generated += 1
            done = seq.generated >= seq.max_tokens
            tokens.append(TokenEvent(seq.request_id, index, done))
            if done:
                del self._running[seq.request_id]
        return StepResult(seconds=seconds, tokens=tokens, admitted=admitted)
