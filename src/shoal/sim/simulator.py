"""The discrete-event fleet simulator: arrivals, routing, replicas, cold starts, a controller.

:class:`Simulator` replays a trace of :class:`~shoal.sim.engine.Request` s against a fleet of
:class:`~shoal.sim.engine.ModelPool` s in virtual time. Each request is ranked by the router
(at the alpha the controller sets), goes to the first ranked model that has a ready replica
(the ingress steers around cold models; when none is ready it waits for the first), waits
for a batch slot, and is timed by the engine latency model. With spillover
(:mod:`shoal.routing.spillover`, the ingress's rule), a request whose first choice would
keep it past its tier's objective goes to the best-ranked model that fits within the allowed
quality drop; it still counts as routed to the first choice (the autoscaler's demand).
Every ``scrape_seconds`` the simulator records what Prometheus would scrape (requests in
flight and waiting, KV-cache use, counters of answered and routed requests, first-token
latencies); every
``interval_seconds`` the controller looks at that record and sets replica counts (and
alpha). New replicas bill at once and serve after the model's cold start; removed replicas
stop taking requests, finish what they run, and stop billing when done.

Everything is deterministic for a trace: no wall clock, no randomness here.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from shoal.contract.cost import ModelPrice, Savings
from shoal.routing.spillover import Load, SpillPolicy, choose
from shoal.sim.engine import ModelPool, Replica, Request
from shoal.sim.external import ExternalEndpoint

FINISH, READY, SCRAPE, EVAL = 0, 1, 2, 3


class Routing(Protocol):
    """Ranks the models for a request (the router, or a fixed assignment)."""

    def ranked(self, topic: str, prompt: int, alpha: float) -> tuple[str, ...]: ...


@dataclass
class Scrape:
    """One scrape of one model."""

    t: float
    in_flight: float
    waiting: float
    kv_cache: float
    engine: bool  # whether a ready replica reported engine metrics
    answered: int  # counters, cumulative
    routed: int


@dataclass
class Recorder:
    """What Prometheus would hold about each model, for the controllers to query."""

    keep_seconds: float
    scrapes: dict[str, deque[Scrape]] = field(default_factory=dict)
    #: (time of first token, TTFT) per model, in time order.
    first_tokens: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    #: (time of finish, seconds in a batch slot) per model, in time order.
    services: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)

    def trim(self, now: float) -> None:
        horizon = now - self.keep_seconds
        for q in self.scrapes.values():
            while q and q[0].t < horizon:
                q.popleft()
        for ft in (*self.first_tokens.values(), *self.services.values()):
            while ft and ft[0][0] < horizon:
                ft.popleft()

    def mean_service(self, model: str, now: float, seconds: float) -> float | None:
        """Mean seconds in a batch slot of the requests that finished in the last ``seconds``
        (the engine's request-duration histograms: end to end less time to first token)."""
        total, count = 0.0, 0
        for t, v in reversed(self.services.get(model, ())):
            if t <= now - seconds:
                break
            if t <= now:
                total += v
                count += 1
        return total / count if count else None

    def window(self, model: str, now: float, seconds: float) -> list[Scrape]:
        """Scrapes of the last ``seconds``, oldest first."""
        out = []
        for s in reversed(self.scrapes.get(model, ())):
            if s.t <= now - seconds:
                break
            out.append(s)
        out.reverse()
        return out

    def ttft_quantile(self, model: str, now: float, seconds: float, q: float) -> float | None:
        """Quantile ``q`` of the TTFTs of first tokens in the last ``seconds``."""
        vals = []
        for t, v in reversed(self.first_tokens.get(model, ())):
            if t <= now - seconds:
                break
            if t <= now:
                vals.append(v)
        vals.sort()
        if not vals:
            return None
        return vals[min(len(vals) - 1, int(q * len(vals)))]

    def rate(
        self, model: str, now: float, seconds: float, key: str, offset: float = 0.0
    ) -> float | None:
        """Per-second increase of counter ``key`` over ``seconds`` ending ``offset`` ago."""
        w = [s for s in self.window(model, now, seconds + offset + 1e-9) if s.t <= now - offset]
        if len(w) < 2:
            return None
        a, b = w[0], w[-1]
        span = b.t - a.t
        return (getattr(b, key) - getattr(a, key)) / span if span > 0 else None


class Controller(Protocol):
    """Sets replica counts (and the router's alpha) from what was scraped."""

    name: str
    interval_seconds: float

    def initial(self) -> dict[str, int]: ...

    def evaluate(self, now: float, sim: Simulator) -> tuple[dict[str, int], float | None]: ...


@dataclass
class SimResult:
    """What one run produced."""

    controller: str
    duration: float
    #: Per request: (arrival, model that served it, TTFT seconds, within its SLO).
    served: list[tuple[float, str, float, bool]]
    cost_by_model: dict[str, float]
    #: Per model: [(time, replicas in force)] at every change.
    timeline: dict[str, list[tuple[float, int]]]
    alpha: list[tuple[float, float]]
    decisions: int
    unserved: int
    #: USD billed per token by each model served outside the fleet.
    external_cost_by_model: dict[str, float] = field(default_factory=dict)
    #: What every answered request's tokens would have cost at the savings reference.
    reference_usd: float | None = None
    #: Requests spilled over, per (router's first choice, model that took it).
    spilled: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Sum over spilled requests of the quality drop (the router's per-cluster units).
    quality_lost: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.served) + self.unserved

    @property
    def spilled_share(self) -> float:
        """Share of all requests that went to a model other than the router's first choice
        because of spillover."""
        total = self.requests
        return sum(self.spilled.values()) / total if total else 0.0

    @property
    def quality_lost_per_request(self) -> float:
        """Mean quality drop over all requests (0 for those not spilled)."""
        total = self.requests
        return self.quality_lost / total if total else 0.0

    @property
    def cost(self) -> float:
        """Replica-hours of the fleet's own models plus the external models' token bills."""
        return sum(self.cost_by_model.values()) + sum(self.external_cost_by_model.values())

    @property
    def savings(self) -> Savings | None:
        """The run's spend against the reference (None: no reference)."""
        return None if self.reference_usd is None else Savings(self.cost, self.reference_usd)

    @property
    def slo_attainment(self) -> float:
        total = len(self.served) + self.unserved
        return sum(1 for s in self.served if s[3]) / total if total else 1.0


class Simulator:
    """One run of a controller over a trace (see the module docstring)."""

    def __init__(
        self,
        pools: Sequence[ModelPool],
        trace: Sequence[Request],
        routing: Routing,
        controller: Controller,
        *,
        duration: float,
        alpha: float,
        scrape_seconds: float = 5.0,
        keep_seconds: float = 900.0,
        external: Sequence[ExternalEndpoint] = (),
        reference: ModelPrice | None = None,
        spillover: SpillPolicy | None = None,
    ) -> None:
        self.pools = {p.name: p for p in pools}
        self.spillover = spillover if spillover is not None and spillover.enabled else None
        self._spilled: dict[tuple[str, str], int] = {}
        self._quality_lost = 0.0
        self.external = {e.name: e for e in external}
        self.reference = reference
        self._reference_usd = 0.0
        self.trace = trace
        self.routing = routing
        self.controller = controller
        self.duration = duration
        self.alpha = alpha
        self.scrape_seconds = scrape_seconds
        self.recorder = Recorder(keep_seconds)
        self.now = 0.0
        self._events: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._ids = 0
        self._answered = dict.fromkeys(self.pools, 0)
        self._routed = dict.fromkeys(self.pools, 0)
        self._served: list[tuple[float, str, float, bool]] = []
        self._ranked: dict[tuple[str, int], tuple[str, ...]] = {}
        self.timeline: dict[str, list[tuple[float, int]]] = {m: [] for m in self.pools}
        self.alpha_log: list[tuple[float, float]] = [(0.0, alpha)]
        self.decisions = 0
        for m, pool in self.pools.items():
            self.recorder.scrapes[m] = deque()
            self.recorder.first_tokens[m] = pool.first_tokens
            self.recorder.services[m] = pool.services

    # --- events -----------------------------------------------------------------------------

    def _push(self, t: float, kind: int, data: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, data))

    def _admit(self, pool: ModelPool, r: Replica, req: Request, arrived: float) -> None:
        now = self.now
        first, finish = pool.timing(r.running, req.prompt_tokens, req.output_tokens)
        kv = req.prompt_tokens + req.output_tokens // 2
        r.stall += pool.prefill_seconds(req.prompt_tokens)  # the batch waits for this prefill
        r.running += 1
        r.kv_tokens += kv
        ttft = now - arrived + first
        self._served.append((req.arrival, pool.name, ttft, ttft <= pool.slo_seconds))
        self._bill_reference(req)
        pool.first_tokens.append((now + first, ttft))
        self._seq += 1
        data = (pool, r, kv, r.stall, now)
        heapq.heappush(self._events, (now + finish, FINISH, self._seq, data))

    def _drain_queue(self, pool: ModelPool) -> None:
        while pool.queue:
            r = pool.free_replica()
            if r is None:
                return
            req, arrived = pool.queue.popleft()
            self._admit(pool, r, req, arrived)

    def _arrive(self, req: Request) -> None:
        key = (req.topic, req.prompt)
        ranked = self._ranked.get(key)
        if ranked is None:  # the router's ranking at the alpha in force, looked up once
            ranked = self._ranked[key] = self.routing.ranked(req.topic, req.prompt, self.alpha)
        if ranked[0] in self._routed:
            self._routed[ranked[0]] += 1
        if self.spillover is not None:
            ranked = self._spill(req, ranked)
        target = None
        for name in ranked:
            outside = self.external.get(name)
            if outside is not None:  # served outside the fleet: at once, billed per token
                self._serve_outside(outside, req)
                return
            pool = self.pools[name]
            if pool.serving:
                target = pool
                break
        pool = target or self.pools[next(m for m in ranked if m in self.pools)]
        r = pool.free_replica()
        if r is not None and not pool.queue:
            self._admit(pool, r, req, self.now)
        else:
            pool.queue.append((req, self.now))

    def _spill(self, req: Request, ranked: tuple[str, ...]) -> tuple[str, ...]:
        """The ranked list with spillover's choice first (the ingress's stage)."""
        policy = self.spillover
        assert policy is not None
        # As the ingress: cold models are passed over first; the choice is among the rest.
        awake = tuple(m for m in ranked if m in self.external or self.pools[m].serving)
        if len(awake) < 2:
            return ranked
        quality_of = getattr(self.routing, "quality", None)
        quality = quality_of(req.topic, req.prompt) if quality_of is not None else None
        choice = choose(awake, _Loads(self, req), quality, policy)
        if not choice.spilled:
            return ranked
        pair = (choice.first, choice.model)
        self._spilled[pair] = self._spilled.get(pair, 0) + 1
        self._quality_lost += choice.quality_drop
        return (choice.model, *(m for m in ranked if m != choice.model))

    def load(self, name: str, prompt_tokens: int) -> Load:
        """What the ingress would know of model ``name`` now (spillover's estimate)."""
        outside = self.external.get(name)
        if outside is not None:
            return Load(0, 0, None, outside.slo_seconds, outside.first_token_seconds, True)
        pool = self.pools[name]
        serving = pool.serving
        running = sum(r.running for r in serving)
        batch = running // len(serving) if serving else 0
        return Load(
            in_flight=running + len(pool.queue),
            slots=len(serving) * pool.latency.max_batch,
            service_seconds=pool.service_estimate,
            slo_seconds=pool.slo_seconds,
            first_token_seconds=pool.latency.ttft_seconds(prompt_tokens, batch),
        )

    def _serve_outside(self, outside: ExternalEndpoint, req: Request) -> None:
        outside.serve(self.now, req.prompt_tokens, req.output_tokens)
        ttft = outside.first_token_seconds
        self._served.append((req.arrival, outside.name, ttft, ttft <= outside.slo_seconds))
        self._bill_reference(req)

    def _bill_reference(self, req: Request) -> None:
        if self.reference is not None:
            self._reference_usd += self.reference.cost(0.0, req.prompt_tokens, req.output_tokens)

    def _finish(
        self, pool: ModelPool, r: Replica, kv_tokens: int, stall: float, admitted: float
    ) -> None:
        if r.stall > stall + 1e-12:
            # Prefills of later admissions stalled this request: it finishes that much later.
            self._seq += 1
            late = self.now + r.stall - stall
            data = (pool, r, kv_tokens, r.stall, admitted)
            heapq.heappush(self._events, (late, FINISH, self._seq, data))
            return
        pool.services.append((self.now, self.now - admitted))
        pool.observe_service(self.now - admitted)
        r.running -= 1
        r.kv_tokens -= kv_tokens
        self._answered[pool.name] += 1
        if r.draining:
            if r.running == 0:
                self._stop(pool, r)
            return
        self._drain_queue(pool)

    def _stop(self, pool: ModelPool, r: Replica) -> None:
        r.stopped = self.now
        pool.billed_seconds += self.now - r.started
        pool.replicas.remove(r)
        if r in pool.serving:
            pool.serving.remove(r)

    def _ready(self, pool: ModelPool, r: Replica) -> None:
        if r.stopped is None and not r.draining and r not in pool.serving:
            pool.serving.append(r)
            self._drain_queue(pool)

    def _scrape(self) -> None:
        for name, pool in self.pools.items():
            ready = pool.serving
            running = sum(r.running for r in pool.replicas)
            waiting = len(pool.queue)
            kv = max((r.kv_tokens / pool.latency.kv_cache_tokens for r in ready), default=0.0)
            self.recorder.scrapes[name].append(
                Scrape(
                    self.now,
                    running + waiting,
                    waiting,
                    kv,
                    bool(ready),
                    self._answered[name],
                    self._routed[name],
                )
            )
        self.recorder.trim(self.now)

    # --- scaling ----------------------------------------------------------------------------

    def set_replicas(self, desired: Mapping[str, int], warm: bool = False) -> None:
        """Start or stop replicas so each model has ``desired`` in force."""
        for name, want in desired.items():
            pool = self.pools[name]
            have = [r for r in pool.replicas if not r.draining]
            if want > len(have):
                for _ in range(want - len(have)):
                    self._ids += 1
                    ready_at = self.now if warm else self.now + pool.cold_start_seconds
                    r = Replica(self._ids, started=self.now, ready_at=ready_at)
                    pool.replicas.append(r)
                    if warm:
                        self._ready(pool, r)
                    else:
                        self._push(ready_at, READY, (pool, r))
            elif want < len(have):
                # Starting replicas go first (nothing to lose), then the least busy.
                order = sorted(have, key=lambda r: (r.ready_at <= self.now, r.running))
                for r in order[: len(have) - want]:
                    if r.running == 0:
                        self._stop(pool, r)
                    else:
                        r.draining = True
                        pool.serving.remove(r)
            if self.timeline[name] == [] or self.timeline[name][-1][1] != want:
                self.timeline[name].append((self.now, want))

    def _evaluate(self) -> None:
        desired, alpha = self.controller.evaluate(self.now, self)
        self.decisions += 1
        self.set_replicas(desired)
        if alpha is not None and alpha != self.alpha:
            self.alpha = alpha
            self._ranked.clear()
            self.alpha_log.append((self.now, alpha))

    # --- run --------------------------------------------------------------------------------

    def run(self) -> SimResult:
        """Replay the whole trace; return what happened."""
        self.set_replicas(self.controller.initial(), warm=True)
        self._push(0.0, SCRAPE, None)
        # The first evaluation comes once a minute of metrics history exists (an operator
        # starting next to a running fleet finds that history in Prometheus).
        self._push(max(self.controller.interval_seconds, 60.0), EVAL, None)
        trace, i, n = self.trace, 0, len(self.trace)
        events = self._events
        inf = float("inf")
        while i < n or events:
            next_arrival = trace[i].arrival if i < n else inf
            if next_arrival <= (events[0][0] if events else inf):
                self.now = next_arrival
                self._arrive(trace[i])
                i += 1
                continue
            t, kind, _, data = heapq.heappop(events)
            self.now = t
            if kind == FINISH:
                self._finish(*cast(tuple[ModelPool, Replica, int, float, float], data))
            elif kind == READY:
                self._ready(*cast(tuple[ModelPool, Replica], data))
            elif t < self.duration:  # scrapes and evaluations stop with the trace
                if kind == SCRAPE:
                    self._scrape()
                    self._push(t + self.scrape_seconds, SCRAPE, None)
                else:
                    self._evaluate()
                    self._push(t + self.controller.interval_seconds, EVAL, None)
        unserved = sum(len(p.queue) for p in self.pools.values())
        # Bill up to the end of the trace (replicas still up then are billed to the end).
        cost = {name: p.cost(self.duration) for name, p in self.pools.items()}
        for name in self.timeline:
            self.timeline[name].append((self.duration, self.timeline[name][-1][1]))
        return SimResult(
            controller=self.controller.name,
            duration=self.duration,
            served=self._served,
            cost_by_model=cost,
            timeline=self.timeline,
            alpha=self.alpha_log,
            decisions=self.decisions,
            unserved=unserved,
            external_cost_by_model={n: e.spend_usd for n, e in self.external.items()},
            reference_usd=self._reference_usd if self.reference is not None else None,
            spilled=dict(self._spilled),
            quality_lost=self._quality_lost,
        )


class _Loads(Mapping[str, Load]):
    """Models' loads computed when :func:`~shoal.routing.spillover.choose` asks (most
    requests look at their first choice only)."""

    def __init__(self, sim: Simulator, req: Request) -> None:
        self._sim = sim
        self._req = req

    def __getitem__(self, name: str) -> Load:
        if name not in self._sim.pools and name not in self._sim.external:
            raise KeyError(name)
        return self._sim.load(name, self._req.prompt_tokens)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._sim.pools, *self._sim.external])

    def __len__(self) -> int:
        return len(self._sim.pools) + len(self._sim.external)


def replicas_at(timeline: list[tuple[float, int]], t: float) -> int:
    """Replicas in force at ``t`` according to a timeline."""
    times = [x for x, _ in timeline]
    k = bisect.bisect_right(times, t) - 1
    return timeline[max(k, 0)][1]
