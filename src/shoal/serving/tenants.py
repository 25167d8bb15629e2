"""Tenants at the fleet endpoint: who is calling, and whether they may now.

:class:`TenantGate` is what an ingress replica holds when its fleet declares tenants
(:class:`~shoal.contract.AccessConfig` ``mode: tenants``, applied by
:meth:`TenantGate.configure` from the ingress's Ray Serve ``user_config``). Per request it

- authenticates ``Authorization: Bearer <key>`` (:meth:`TenantGate.authenticate`): the key's
  SHA-256 digest is compared with every declared digest in constant time
  (``hmac.compare_digest``, no early exit), and the key itself is never kept, logged or
  labelled; a missing or unknown key is a 401 ``invalid_api_key`` in OpenAI's shape;
- admits the request against the tenant's limits (:meth:`TenantGate.admit`): requests and
  tokens per minute (sliding windows), concurrent requests, and a $/hour budget (a rolling
  hour); over a limit it is a 429 ``rate_limit_exceeded`` (budget: ``insufficient_quota``,
  told first when the budget is spent, whatever else refuses the request too) with OpenAI's
  ``x-ratelimit-*`` headers and ``Retry-After``;
- lowers the tenant's quality weight alpha as its spend nears its budget
  (:meth:`TenantGate.alpha`), always clamped to the tenant's ``[min_alpha, max_alpha]``.

Limits hold across ingress replicas through a shared usage store
(:mod:`shoal.serving.usage`): every replica pushes its usage deltas and reads the fleet-wide
totals every ``sync_interval_seconds`` in the background, never per request. Between two
syncs a replica admits at most its share of the headroom the store granted it
(:attr:`Snapshot.allow_requests`), so replicas together cannot overshoot; a grant is a
lease that ends :func:`~shoal.serving.usage.grant_lease` seconds after its sync was sent,
so a lost replica's grant is free again soon after. While the store is
unreachable the gate acts as ``store_failure_mode`` says (``share``: each replica enforces
its 1/N share alone; ``open``: each enforces the whole limit; ``closed``: limited tenants get
503).

Per request this is dict lookups and arithmetic; pure Python, no Ray (the store client is
passed in).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shoal.contract import AccessConfig, TenantAccess
from shoal.serving.openai_api import ApiError

MINUTE = 60.0
HOUR = 3600.0

#: Why a request of a tenant was refused (the ``reason`` label of the rejections metric).
Reason = Literal["requests", "tokens", "concurrency", "budget", "store", "model"]


class Window:
    """A sliding window of ``span`` seconds in ``slots`` buckets: amounts added now count
    until ``span`` seconds later (to a bucket's width). Adding and reading are O(1) amortised:
    buckets are cleared as time passes them."""

    __slots__ = ("counts", "epoch", "slots", "total", "width")

    def __init__(self, span: float = MINUTE, slots: int = 60) -> None:
        self.width = span / slots
        self.slots = slots
        self.counts = [0.0] * slots
        self.epoch = 0  # the newest bucket's number (time // width)
        self.total = 0.0

    def _advance(self, now: float) -> int:
        epoch = int(now // self.width)
        gap = epoch - self.epoch
        if gap > 0:
            if gap >= self.slots:
                self.counts = [0.0] * self.slots
                self.total = 0.0
            else:
                counts = self.counts
                for e in range(self.epoch + 1, epoch + 1):
                    i = e % self.slots
                    self.total -= counts[i]
                    counts[i] = 0.0
                if self.total < 1e-9:
                    self.total = max(0.0, self.total)
            self.epoch = epoch
        return epoch

    def add(self, amount: float, now: float) -> None:
        epoch = self._advance(now)
        i = epoch % self.slots
        # A negative correction (fewer tokens than reserved) never makes a bucket negative.
        amount = max(amount, -self.counts[i])
        self.counts[i] += amount
        self.total += amount

    def used(self, now: float) -> float:
        self._advance(now)
        return self.total

    def reset_after(self, now: float) -> float:
        """Seconds until the oldest counted amount leaves the window (0: empty)."""
        epoch = self._advance(now)
        if self.total <= 0:
            return 0.0
        for age in range(self.slots - 1, -1, -1):
            if self.counts[(epoch - age) % self.slots] > 0:
                return max(0.0, (epoch - age + self.slots) * self.width - now)
        return 0.0


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes its ``x-ratelimit-reset-*`` headers: ``20ms``, ``1s``,
    ``6m0s``."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def parse_bearer(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (None if absent or malformed)."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


def invalid_api_key(present: bool) -> ApiError:
    """401 as OpenAI answers it. The message never repeats the key."""
    message = (
        "Incorrect API key provided."
        if present
        else "You didn't provide an API key. Provide it as 'Authorization: Bearer <key>'."
    )
    return ApiError(
        401,
        message,
        code="invalid_api_key",
        headers={"www-authenticate": 'Bearer realm="shoal"'},
    )


def budget_alpha(
    base: float,
    spent: float,
    budget: float | None,
    soft_percent: int,
    floor: float | None,
    ceiling: float | None,
) -> float:
    """The quality weight for a tenant that has ``spent`` of its ``budget`` this hour.

    Up to ``soft_percent`` of the budget: ``base``; from there to 100 %: linearly down to the
    tenant's floor (``min_alpha``, else 0), so the ranker prefers cheaper models. ``base``
    (the policy's alpha, or a request's own) is clamped to ``[floor, ceiling]`` first.
    """
    lo = 0.0 if floor is None else floor
    hi = 1.0 if ceiling is None else ceiling
    alpha = base = min(hi, max(lo, base))
    if budget is not None and budget > 0:
        soft = soft_percent / 100.0
        ratio = spent / budget
        if ratio > soft:
            pressure = 1.0 if soft >= 1.0 else min(1.0, (ratio - soft) / (1.0 - soft))
            alpha = base - (base - lo) * pressure if base > lo else base
    return min(hi, max(lo, alpha))


@dataclass
class Snapshot:
    """What the shared store said of one tenant at the last sync (fleet-wide)."""

    requests: float = 0.0
    tokens: float = 0.0
    cost: float = 0.0
    #: Requests in flight on the other replicas.
    others_in_flight: int = 0
    #: How many requests / tokens this replica may admit until the next sync.
    allow_requests: float = math.inf
    allow_tokens: float = math.inf
    #: The fleet-wide tokens left in the window.
    headroom_tokens: float = math.inf
    requests_reset: float = 0.0
    tokens_reset: float = 0.0
    cost_reset: float = 0.0
    at: float = 0.0
    #: When (by this replica's clock) the grants above expire: past it the replica admits
    #: nothing more on them until the next sync (:func:`shoal.serving.usage.grant_lease`).
    lease_end: float = math.inf


@dataclass
class Usage:
    """Usage of one tenant on this replica since the last push (sent to the store)."""

    attempts: int = 0
    requests: int = 0
    tokens: float = 0.0
    cost: float = 0.0


@dataclass
class TenantState:
    """One tenant's counters on this replica."""

    spec: TenantAccess
    requests: Window = field(default_factory=Window)
    tokens: Window = field(default_factory=Window)
    cost: Window = field(default_factory=lambda: Window(HOUR, 60))
    in_flight: int = 0
    #: The admitted requests not over yet, by id, with when they started: a request whose
    #: end was never told (a client gone before its stream began) is dropped after
    #: ``max_request_seconds`` rather than holding a concurrency slot for ever.
    open: dict[int, float] = field(default_factory=dict)
    #: Usage not yet in the shared store (pushed at the next sync): what this replica
    #: admitted on top of :attr:`snapshot`.
    pending: Usage = field(default_factory=Usage)
    #: Usage pushed to the store whose snapshot has not come back yet: it is not in
    #: :attr:`snapshot` either, so it still counts against the snapshot's grant.
    sent: Usage = field(default_factory=Usage)
    snapshot: Snapshot | None = None

    @property
    def limited(self) -> bool:
        lim = self.spec.limits
        return bool(
            lim.requests_per_minute
            or lim.tokens_per_minute
            or lim.concurrent_requests
            or self.spec.max_cost_per_hour is not None
        )


@dataclass
class Ticket:
    """An admitted request: its tenant, the tokens it reserved, the headers it carries."""

    tenant: TenantState
    reserved_tokens: int
    headers: dict[str, str]
    done: bool = False
    id: int = 0


class TenantGate:
    """Authentication, limits and budgets of one ingress replica (module docstring)."""

    def __init__(
        self,
        config: AccessConfig,
        replicas: int = 1,
        clock: Callable[[], float] = time.time,
        max_request_seconds: float = 3600.0,
    ) -> None:
        self.replicas = max(1, replicas)
        self.clock = clock
        self.max_request_seconds = max_request_seconds
        self._ids = itertools.count(1)
        #: False while the shared store is unreachable (the failure mode applies).
        self.store_up = True
        self.config = config
        self.tenants: dict[str, TenantState] = {}
        self._digests: list[tuple[bytes, str]] = []
        self.configure(config)

    # -- configuration ----------------------------------------------------------------------

    def configure(self, config: AccessConfig) -> None:
        """Apply a new access config at once; tenants that remain keep their counters."""
        tenants: dict[str, TenantState] = {}
        for spec in config.tenants:
            state = self.tenants.get(spec.name)
            if state is None:
                state = TenantState(spec)
            else:
                state.spec = spec
            tenants[spec.name] = state
        digests = [(bytes.fromhex(d), t.name) for t in config.tenants for d in t.key_digests]
        # One assignment each, with no await between them: a request sees the old config or
        # the new one, never a mix.
        self.config, self.tenants, self._digests = config, tenants, digests

    @property
    def failure_mode(self) -> str:
        return self.config.store_failure_mode

    # -- authentication ---------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> TenantState:
        """The tenant whose key the request bears; 401 ``invalid_api_key`` otherwise."""
        key = parse_bearer(authorization)
        if key is None:
            raise invalid_api_key(present=bool(authorization))
        presented = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for digest, name in self._digests:  # every digest, whatever matched before
            if hmac.compare_digest(presented, digest):
                found = name
        tenants = self.tenants
        if found is None or found not in tenants:
            raise invalid_api_key(present=True)
        return tenants[found]

    # -- budgets and alpha ------------------------------------------------------------------

    def spent(self, t: TenantState, now: float) -> float:
        """USD the tenant spent in the last hour, fleet-wide as far as this replica knows."""
        snap = t.snapshot
        if snap is not None and self.store_up:
            return snap.cost + t.pending.cost + t.sent.cost
        return t.cost.used(now) * (self.replicas if self.failure_mode == "share" else 1)

    def alpha(self, t: TenantState, base: float) -> float:
        spec = t.spec
        budget = float(spec.max_cost_per_hour) if spec.max_cost_per_hour is not None else None
        spent = self.spent(t, self.clock()) if budget is not None else 0.0
        return budget_alpha(
            base, spent, budget, spec.budget_soft_percent, spec.min_alpha, spec.max_alpha
        )

    def allows(self, t: TenantState, model: str) -> bool:
        return t.spec.models is None or model in t.spec.models

    # -- admission --------------------------------------------------------------------------

    def admit(self, t: TenantState, prompt_tokens: int) -> Ticket:
        """Count one request of tenant ``t`` with about ``prompt_tokens`` of prompt, or raise
        the 429 (503 in ``closed`` mode without a store) that says why not."""
        now = self.clock()
        spec = t.spec
        lim = spec.limits
        t.pending.attempts += 1
        shared = self.store_up and t.snapshot is not None
        if not self.store_up and self.failure_mode == "closed" and t.limited:
            raise TenantRefused(
                "store",
                503,
                "The fleet cannot check this key's rate limits right now; retry later.",
                type="server_error",
                code="rate_limit_unavailable",
                headers={"retry-after": "1"},
            )
        # The share of a limit this replica enforces alone (no shared view yet, or none).
        share = 1.0 if shared or self.failure_mode == "open" else 1.0 / self.replicas
        snap = t.snapshot if shared else None
        headers: dict[str, str] = {}
        refused: tuple[Reason, float] | None = None
        #: Refused only because this replica's grant ran out while the fleet has headroom:
        #: the next sync's grant may well admit it.
        granted_out = False

        rpm = lim.requests_per_minute
        if rpm is not None:
            if snap is not None:
                since = t.pending.requests + t.sent.requests
                used = snap.requests + since
                ok = since + 1 <= (snap.allow_requests if now < snap.lease_end else since)
                reset = max(0.0, snap.requests_reset - (now - snap.at))
            else:
                used = t.requests.used(now)
                ok = used + 1 <= max(1.0, math.floor(rpm * share))
                used /= share
                reset = t.requests.reset_after(now)
            if not ok:
                refused = ("requests", reset or 1.0)
                granted_out = snap is not None and rpm - used >= 1
            # Refused: none remain for this caller now (the rest is other replicas' part).
            remaining = max(0, math.floor(rpm - used - 1)) if ok else 0
            headers["x-ratelimit-limit-requests"] = str(rpm)
            headers["x-ratelimit-remaining-requests"] = str(remaining)
            headers["x-ratelimit-reset-requests"] = format_reset(reset)

        token_room = self._token_room(t, prompt_tokens, now, snap, share, headers)
        if token_room is not None and refused is None:
            refused, granted_out = token_room

        conc = lim.concurrent_requests
        if conc is not None and refused is None:
            others = snap.others_in_flight if snap is not None else 0
            cap = conc if shared or self.failure_mode == "open" else max(1, conc // self.replicas)
            if others + t.in_flight + 1 > cap:
                self._drop_stale(t, now)
            if others + t.in_flight + 1 > cap:
                refused = ("concurrency", 1.0)

        # A spent budget is the refusal that lasts: it is the one told, whatever else also
        # refuses the request now (a retry a second later would only meet it).
        if spec.max_cost_per_hour is not None:
            budget = float(spec.max_cost_per_hour)
            if self.spent(t, now) >= budget:
                if snap is not None:
                    wait = max(1.0, snap.cost_reset - (now - snap.at))
                else:
                    wait = max(1.0, t.cost.reset_after(now))
                refused, granted_out = ("budget", wait), False

        if refused is not None:
            reason, wait = refused
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            err = rate_limited(reason, spec, headers)
            err.granted_out = granted_out
            raise err

        t.in_flight += 1
        ticket = Ticket(t, prompt_tokens, headers, id=next(self._ids))
        t.open[ticket.id] = now
        t.requests.add(1, now)
        t.pending.requests += 1
        if prompt_tokens:
            t.tokens.add(prompt_tokens, now)
            t.pending.tokens += prompt_tokens
        return ticket

    def _token_room(
        self,
        t: TenantState,
        prompt_tokens: int,
        now: float,
        snap: Snapshot | None,
        share: float,
        headers: dict[str, str],
    ) -> tuple[tuple[Reason, float], bool] | None:
        """Check ``prompt_tokens`` against the tenant's tokens per minute, writing the token
        headers; the refusal (reason, wait) and whether only this replica's grant ran out, or
        None when they fit."""
        tpm = t.spec.limits.tokens_per_minute
        if tpm is None:
            return None
        if snap is not None:
            since_t = t.pending.tokens + t.sent.tokens
            used_t = snap.tokens + since_t
            # The first request after a sync may take the whole headroom (a prompt larger
            # than this replica's share is not refused for ever).
            ok_t = now < snap.lease_end and (
                since_t + prompt_tokens <= snap.allow_tokens
                or (since_t <= 0 and prompt_tokens <= snap.headroom_tokens)
            )
            reset_t = max(0.0, snap.tokens_reset - (now - snap.at))
        else:
            used_t = t.tokens.used(now)
            ok_t = used_t + prompt_tokens <= max(1.0, math.floor(tpm * share))
            used_t /= share
            reset_t = t.tokens.reset_after(now)
        remaining_t = max(0, math.floor(tpm - used_t - prompt_tokens)) if ok_t else 0
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(remaining_t)
        headers["x-ratelimit-reset-tokens"] = format_reset(reset_t)
        if ok_t:
            return None
        return ("tokens", reset_t or 1.0), snap is not None and tpm - used_t >= prompt_tokens

    def admit_tokens(self, ticket: Ticket, prompt_tokens: int) -> None:
        """Reserve the prompt tokens of a request admitted before its body was read
        (:meth:`admit` with none), or raise the 429 that says why not. A refused request
        still counts as a request (as OpenAI counts them); the caller finishes its ticket."""
        if not prompt_tokens or ticket.reserved_tokens:
            return
        t = ticket.tenant
        now = self.clock()
        shared = self.store_up and t.snapshot is not None
        share = 1.0 if shared or self.failure_mode == "open" else 1.0 / self.replicas
        headers = ticket.headers
        # Measured without this request's own reservation (it has none yet).
        room = self._token_room(
            t, prompt_tokens, now, t.snapshot if shared else None, share, headers
        )
        if room is not None:
            (reason, wait), granted_out = room
            headers = {**headers, "retry-after": str(max(1, math.ceil(wait)))}
            err = rate_limited(reason, t.spec, headers)
            err.granted_out = granted_out
            raise err
        ticket.reserved_tokens = prompt_tokens
        t.tokens.add(prompt_tokens, now)
        t.pending.tokens += prompt_tokens

    def _drop_stale(self, t: TenantState, now: float) -> None:
        stale = [i for i, at in t.open.items() if now - at > self.max_request_seconds]
        for i in stale:
            del t.open[i]
        t.in_flight = len(t.open)

    def finish(self, ticket: Ticket, tokens: int | None, cost: float) -> None:
        """The request is over: release its concurrency slot and count what it used
        (``tokens``: prompt plus completion as the engine counted them; None when it failed:
        its reservation stays counted)."""
        if ticket.done:
            return
        ticket.done = True
        t = ticket.tenant
        if t.open.pop(ticket.id, None) is not None:
            t.in_flight = max(0, t.in_flight - 1)
        now = self.clock()
        if tokens is not None:
            extra = tokens - ticket.reserved_tokens
            if extra:
                t.tokens.add(extra, now)
                t.pending.tokens += extra
        if cost > 0:
            t.cost.add(cost, now)
            t.pending.cost += cost


class TenantRefused(ApiError):
    """A request a tenant's limits, budget or allowed models refuse, with the reason."""

    def __init__(self, reason: Reason, status: int, message: str, **kw: Any) -> None:
        super().__init__(status, message, **kw)
        self.reason: Reason = reason
        #: Only this replica's grant ran out (the fleet has headroom): worth one more try
        #: after the next sync.
        self.granted_out = False


def model_denied(model: str) -> TenantRefused:
    """A named model the tenant may not use: OpenAI's own answer for a model a key has no
    access to (404 ``model_not_found``), which does not tell whether the fleet serves it."""
    return TenantRefused(
        "model",
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def rate_limited(reason: Reason, spec: TenantAccess, headers: dict[str, str]) -> TenantRefused:
    """The 429 of a limit, in OpenAI's shape, with the limit headers."""
    lim = spec.limits
    if reason == "budget":
        return TenantRefused(
            "budget",
            429,
            f"Tenant {spec.name} has spent its budget of ${spec.max_cost_per_hour} per hour; "
            "retry when older spending leaves the hour.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    what = {
        "requests": f"requests per minute (limit {lim.requests_per_minute})",
        "tokens": f"tokens per minute (limit {lim.tokens_per_minute})",
        "concurrency": f"concurrent requests (limit {lim.concurrent_requests})",
    }.get(reason, reason)
    return TenantRefused(
        reason,
        429,
        f"Rate limit reached for tenant {spec.name} on {what}. "
        f"Please try again in {headers.get('retry-after', '1')}s.",
        type=reason if reason in ("requests", "tokens") else "requests",
        code="rate_limit_exceeded",
        headers=headers,
    )


def enabled(config: AccessConfig) -> bool:
    """Whether a fleet checks keys at all (an open fleet costs nothing per request)."""
    return config.mode == "tenants"
