"""The shared usage store that holds tenants' limits across ingress replicas.

:class:`UsageStore` keeps every tenant's fleet-wide usage (requests and tokens in the last
minute, USD in the last hour, requests in flight per replica). Ingress replicas never call
it per request: :class:`UsageSync` runs in each replica's event loop and, every
``sync_interval_seconds``, pushes what the replica admitted since its last push and reads
back a :class:`~shoal.serving.tenants.Snapshot` per tenant that has a limit or a budget.
Each snapshot carries a grant: what the replica may admit until its next sync, its part of
the remaining headroom in proportion to its recent demand (smoothed, so a quiet replica
keeps a part), never more than the other replicas' outstanding grants leave. Grants are
leases, so replicas that sync at different times cannot together overshoot a limit.

Under Ray the store is one small named actor per fleet (:class:`RayStore`, zero CPUs,
detached so that no single ingress replica owns it, not restarted by Ray), created by
whichever replica comes first. When a sync fails (the actor died, or did not answer within a
second) the gate's ``store_up`` turns false and the fleet's ``store_failure_mode`` applies;
the replica keeps retrying, and re-creates the store (with empty counters) after
:data:`RECREATE_AFTER_SECONDS` without an answer, so that a slow store is not replaced at
its first hiccup.

:class:`UsageStore` is plain Python; :class:`LocalStore` serves it in-process (one ingress,
unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoal.serving.restore import Restorer
from shoal.serving.tenants import HOUR, Snapshot, TenantGate, Usage, Window

log = logging.getLogger("shoal.serving.tenants")

#: A replica that has not synced for this long (or twice its lease, if longer) no longer
#: counts (its in-flight, its share).
REPLICA_STALE_SECONDS = 5.0
#: How long a sync may take before the store counts as unreachable.
SYNC_TIMEOUT_SECONDS = 1.0
#: After this long without an answer, a replica re-creates the store (empty counters).
RECREATE_AFTER_SECONDS = 10.0
#: How long reading the tenants' recent usage from Prometheus may take.
RESTORE_TIMEOUT_SECONDS = 3.0
#: Weight of the latest interval in a replica's demand average.
DEMAND_WEIGHT = 0.3

#: Per tenant, what a replica pushes: (attempts, requests, tokens, cost, in_flight).
Push = tuple[int, int, float, float, int]
#: Per tenant, the limits the store splits: (requests per minute, tokens per minute).
Limits = tuple[int | None, int | None]

_MODES = {
    "share": "per replica (each its 1/N share)",
    "open": "per replica (each the whole limit)",
    "closed": "closed (503 for limited tenants)",
}


def grant_lease(sync_interval: float) -> float:
    """Seconds a grant stays valid after the sync that asked for it was sent (pure): by then
    a replica syncing every ``sync_interval`` seconds has its next answer (one timeout, the
    interval, another timeout) or knows the store is unreachable (its failure mode
    applies), so a replica that is alive never admits on an expired grant, and the store
    may hand a lost replica's grant to the others once it expires."""
    return sync_interval + 2 * SYNC_TIMEOUT_SECONDS


@dataclass
class _Tally:
    requests: Window = field(default_factory=Window)
    tokens: Window = field(default_factory=Window)
    cost: Window = field(default_factory=lambda: Window(HOUR, 60))
    in_flight: dict[str, int] = field(default_factory=dict)
    demand: dict[str, float] = field(default_factory=dict)
    #: What each replica may still admit on top of what it pushed (its last grant).
    granted_requests: dict[str, float] = field(default_factory=dict)
    granted_tokens: dict[str, float] = field(default_factory=dict)


class UsageStore:
    """Fleet-wide usage of every tenant (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.tallies: dict[str, _Tally] = {}
        self.seen: dict[str, float] = {}
        #: Per replica, when the grants of its last sync expire (:func:`grant_lease`); the
        #: grants of a replica lost since are reserved until then, no longer.
        self.leases: dict[str, float] = {}
        #: Whether a replica restored the tenants' recent usage into this store already.
        self.seeded = False

    def seed(self, baseline: dict[str, tuple[float, float, float]]) -> bool:
        """Count ``baseline`` (per tenant: requests and tokens of the last minute, USD of the
        last hour; :mod:`shoal.serving.restore`) as used now, once per store: False when a
        replica seeded it before."""
        if self.seeded:
            return False
        now = self.clock()
        for name, (requests, tokens, cost) in baseline.items():
            tally = self.tallies.setdefault(name, _Tally())
            if requests > 0:
                tally.requests.add(requests, now)
            if tokens > 0:
                tally.tokens.add(tokens, now)
            if cost > 0:
                tally.cost.add(cost, now)
        self.seeded = True
        return True

    def sync(
        self,
        replica: str,
        limits: dict[str, Limits],
        usage: dict[str, Push],
        replicas: int = 1,
        lease: float = grant_lease(0.2),
    ) -> dict[str, Snapshot]:
        """Add ``replica``'s usage since its last sync; the snapshot of every tenant in
        ``limits`` as this replica should enforce it until its next sync. ``replicas``: how
        many ingress replicas the fleet runs (the ones not seen yet keep a part too);
        ``lease``: how long the grants given now hold (the replica stops admitting on them
        by then)."""
        now = self.clock()
        self.seen[replica] = now
        self.leases[replica] = now + lease
        live = sorted(
            r
            for r, t in self.seen.items()
            if now - t < max(REPLICA_STALE_SECONDS, 2 * (self.leases[r] - t))
        )
        for gone in [r for r in self.seen if r not in live]:
            del self.seen[gone]
            del self.leases[gone]
        holding = [r for r in live if self.leases[r] > now]
        out: dict[str, Snapshot] = {}
        for name, (rpm, tpm) in limits.items():
            tally = self.tallies.get(name)
            if tally is None:
                tally = self.tallies[name] = _Tally()
            attempts, requests, tokens, cost, in_flight = usage.get(name, (0, 0, 0.0, 0.0, 0))
            if requests:
                tally.requests.add(requests, now)
            if tokens:
                tally.tokens.add(tokens, now)
            if cost:
                tally.cost.add(cost, now)
            tally.in_flight[replica] = in_flight
            before = tally.demand.get(replica, float(attempts))
            tally.demand[replica] = before + DEMAND_WEIGHT * (attempts - before)
            for r in [r for r in tally.in_flight if r not in live]:
                tally.in_flight.pop(r, None)
                tally.demand.pop(r, None)
                tally.granted_requests.pop(r, None)
                tally.granted_tokens.pop(r, None)
            used_r = tally.requests.used(now)
            used_t = tally.tokens.used(now)
            head_t = math.inf if tpm is None else max(0.0, tpm - used_t)
            out[name] = Snapshot(
                requests=used_r,
                tokens=used_t,
                cost=tally.cost.used(now),
                others_in_flight=sum(n for r, n in tally.in_flight.items() if r != replica),
                allow_requests=_grant(
                    rpm, used_r, replica, holding, replicas, tally.demand, tally.granted_requests
                ),
                allow_tokens=_grant(
                    tpm, used_t, replica, holding, replicas, tally.demand, tally.granted_tokens
                ),
                headroom_tokens=head_t,
                requests_reset=tally.requests.reset_after(now),
                tokens_reset=tally.tokens.reset_after(now),
                cost_reset=tally.cost.reset_after(now),
                at=now,
            )
        for gone in [n for n in self.tallies if n not in limits and not self.tallies[n].demand]:
            del self.tallies[gone]
        return out

    def usage(self) -> dict[str, tuple[float, float, float]]:
        """Per tenant, what the store counts now: requests and tokens of the last minute, USD
        of the last hour (what an operator on call, and the tests of a lost store, read)."""
        now = self.clock()
        return {
            name: (t.requests.used(now), t.tokens.used(now), t.cost.used(now))
            for name, t in self.tallies.items()
        }

    def ping(self) -> bool:
        return True


def _grant(
    limit: int | None,
    used: float,
    replica: str,
    holding: list[str],
    replicas: int,
    demand: dict[str, float],
    granted: dict[str, float],
) -> float:
    """What ``replica`` may admit until its next sync: its part of the headroom (in
    proportion to the demand plus one of each replica in ``holding``, the ones whose last
    grant's lease has not ended, this one among them, so a quiet replica keeps a part;
    rounded down, the rest to the busiest; replicas not seen yet count as quiet ones), but
    never more than what the other holders' outstanding grants leave. Grants are leases:
    together they never exceed the headroom, so replicas syncing at different times cannot
    overshoot the limit; a replica whose lease ended without a sync (lost, most likely: a
    live one syncs well within it) neither reserves its grant nor takes a part."""
    if limit is None:
        return math.inf
    headroom = max(0, math.floor(limit - used))
    weights = {r: demand.get(r, 0.0) + 1.0 for r in holding}
    total = sum(weights.values()) + max(0, replicas - len(holding))
    parts = {r: math.floor(headroom * w / total) for r, w in weights.items()}
    if len(holding) >= replicas:
        busiest = max(holding, key=lambda r: (weights[r], r))
        parts[busiest] += headroom - sum(parts.values())
    reserved = sum(g for r, g in granted.items() if r != replica and r in weights)
    grant = float(max(0, min(parts.get(replica, 0), headroom - reserved)))
    granted[replica] = grant
    return grant


class StoreClient(Protocol):
    """How a replica reaches the store."""

    async def sync(
        self,
        replica: str,
        limits: dict[str, Limits],
        usage: dict[str, Push],
        replicas: int,
        lease: float,
    ) -> dict[str, Snapshot]: ...

    def recreate(self) -> None: ...

    async def seed(self, baseline: dict[str, tuple[float, float, float]]) -> bool: ...


class LocalStore:
    """A :class:`UsageStore` in this process (one ingress replica, or tests)."""

    def __init__(self, store: UsageStore | None = None) -> None:
        self.store = store or UsageStore()

    async def sync(
        self,
        replica: str,
        limits: dict[str, Limits],
        usage: dict[str, Push],
        replicas: int,
        lease: float,
    ) -> dict[str, Snapshot]:
        return self.store.sync(replica, limits, usage, replicas, lease)

    def recreate(self) -> None:
        """Nothing to re-create in-process."""

    async def seed(self, baseline: dict[str, tuple[float, float, float]]) -> bool:
        return self.store.seed(baseline)


def store_name(fleet: str, namespace: str) -> str:
    """Name of a fleet's store actor."""
    return f"shoal-usage-{namespace}-{fleet}"


#: Ray namespace of the store actors.
STORE_NAMESPACE = "shoal"


class RayStore:
    """The fleet's store as a named Ray actor (get-or-create)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.actor: Any = None
        self.recreate()

    def recreate(self) -> None:
        import ray

        remote = ray.remote(num_cpus=0, max_restarts=0)(UsageStore)
        self.actor = remote.options(
            name=self.name,
            namespace=STORE_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
        ).remote()

    async def sync(
        self,
        replica: str,
        limits: dict[str, Limits],
        usage: dict[str, Push],
        replicas: int,
        lease: float,
    ) -> dict[str, Snapshot]:
        result: dict[str, Snapshot] = await self.actor.sync.remote(
            replica, limits, usage, replicas, lease
        )
        return result

    async def seed(self, baseline: dict[str, tuple[float, float, float]]) -> bool:
        done: bool = await self.actor.seed.remote(baseline)
        return done


class UsageSync:
    """The background loop of one replica that keeps its gate's snapshots fresh."""

    def __init__(
        self,
        gate: TenantGate,
        store: StoreClient,
        replica: str,
        restore: Restorer | None = None,
    ) -> None:
        self.gate = gate
        self.store = store
        self.replica = replica
        #: Where a store that starts empty gets the tenants' recent usage from (None: it
        #: starts empty); :mod:`shoal.serving.restore`.
        self.restore = restore
        self._seeded = restore is None
        self.failing_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._round = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def next_round(self, rounds: int = 1) -> None:
        """Wait until this replica has synced ``rounds`` more times (at most that many sync
        intervals and a timeout each)."""
        for _ in range(rounds):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._round.wait(),
                    self.gate.config.sync_interval_seconds + SYNC_TIMEOUT_SECONDS,
                )

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync_once()
            except Exception:  # never let the loop die; the next round retries
                log.exception("tenant usage sync failed")
            done, self._round = self._round, asyncio.Event()
            done.set()
            await asyncio.sleep(self.gate.config.sync_interval_seconds)

    async def sync_once(self) -> bool:
        """Push this replica's usage and take the store's snapshots; False when the store
        did not answer (the gate then acts by its failure mode)."""
        if not self._seeded:
            await self._seed()
        gate = self.gate
        tenants = gate.tenants
        limits: dict[str, Limits] = {}
        sent: dict[str, Usage] = {}
        usage: dict[str, Push] = {}
        for name, t in tenants.items():
            if not t.limited:  # nothing to hold fleet-wide: no limit, no budget
                continue
            lim = t.spec.limits
            limits[name] = (lim.requests_per_minute, lim.tokens_per_minute)
            p = sent[name] = t.sent = t.pending
            t.pending = Usage()
            usage[name] = (p.attempts, p.requests, p.tokens, p.cost, t.in_flight)
        lease = grant_lease(gate.config.sync_interval_seconds)
        # The grants expire ``lease`` seconds after this moment by this replica's clock: no
        # later than the store's own reckoning, which starts when it answers.
        lease_end = gate.clock() + lease
        try:
            snaps = await asyncio.wait_for(
                self.store.sync(self.replica, limits, usage, gate.replicas, lease),
                SYNC_TIMEOUT_SECONDS,
            )
        except Exception as exc:
            for name, p in sent.items():  # not counted: push it again next time
                t = tenants[name]
                q = t.pending
                t.sent = Usage()
                t.pending = Usage(
                    q.attempts + p.attempts,
                    q.requests + p.requests,
                    q.tokens + p.tokens,
                    q.cost + p.cost,
                )
            self._failed(exc)
            return False
        for name, snap in snaps.items():
            state = tenants.get(name)
            if state is not None:
                snap.lease_end = lease_end
                state.snapshot = snap
                state.sent = Usage()
        if not gate.store_up:
            log.warning("tenant usage store reachable again: limits are fleet-wide again")
        gate.store_up = True
        self.failing_since = None
        return True

    async def _seed(self) -> None:
        """Seed a store that was never seeded with the tenants' recent usage (the first
        replica to get there does it; for the others the store says it was done)."""
        assert self.restore is not None
        try:
            baseline = await asyncio.wait_for(self.restore(), RESTORE_TIMEOUT_SECONDS)
            seeded = await asyncio.wait_for(self.store.seed(baseline), SYNC_TIMEOUT_SECONDS)
        except Exception as exc:  # tried again at the next sync
            log.warning("tenants' recent usage not restored yet: %s", exc)
            return
        self._seeded = True
        if seeded:
            log.info("restored the recent usage of %d tenants from Prometheus", len(baseline))

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.gate.store_up:
            log.warning(
                "tenant usage store unreachable (%s): limits now %s",
                type(exc).__name__,
                _MODES[self.gate.failure_mode],
            )
            self.gate.store_up = False
            self.failing_since = now
        elif self.failing_since is not None and now - self.failing_since > RECREATE_AFTER_SECONDS:
            log.warning("re-creating the tenant usage store (its counters start empty)")
            self.failing_since = now
            try:
                self.store.recreate()
                self._seeded = self.restore is None  # the new store starts empty
            except Exception as err:
                log.warning("could not re-create the tenant usage store: %s", err)
