"""Admitting a tenant's request in two steps, so that a refused request costs next to nothing.

Called by :meth:`shoal.serving.ingress.Endpoint.generate` when the fleet has tenants, after
the key was checked (:meth:`~shoal.serving.tenants.TenantGate.authenticate`, before any
route runs):

1. :meth:`Admission.request`, before the body is read: requests per minute, concurrent
   requests, the budget, and tokens per minute already spent. A tenant over a request-count
   limit is refused here: its body is never read or parsed, its query never embedded, and it
   is no routing demand (no router decision is counted for it).
2. :meth:`Admission.tokens`, once the body is parsed: the prompt's estimated tokens against
   tokens per minute, still before the router ranks anything.

Each step, refused only because this replica's share of the fleet-wide limit ran out while
the fleet has headroom, waits for the next grants of the usage store (three syncs at most)
before it answers 429.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from shoal.serving.tenants import TenantGate, TenantRefused, TenantState, Ticket
from shoal.serving.usage import UsageSync

T = TypeVar("T")

#: Syncs with the usage store a request waits at most for a grant before it is refused.
GRANT_ROUNDS = 3


class Admission:
    """The two admission steps of one ingress replica (module docstring)."""

    def __init__(self, sync: Callable[[], UsageSync | None]) -> None:
        self._sync = sync

    async def request(self, gate: TenantGate, tenant: TenantState) -> Ticket:
        """Count the request against its tenant's request limits and budget, or raise."""
        return await self._retry(lambda: gate.admit(tenant, 0))

    async def tokens(self, gate: TenantGate, ticket: Ticket, prompt_tokens: int) -> None:
        """Reserve the prompt's tokens against the tenant's tokens per minute, or raise."""
        await self._retry(lambda: gate.admit_tokens(ticket, prompt_tokens))

    async def _retry(self, attempt: Callable[[], T]) -> T:
        for round_ in range(GRANT_ROUNDS + 1):
            try:
                return attempt()
            except TenantRefused as err:
                sync = self._sync()
                if not err.granted_out or sync is None or round_ == GRANT_ROUNDS:
                    raise
                await sync.next_round()
        raise AssertionError("unreachable")
