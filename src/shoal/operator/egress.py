"""The addresses of the host names a fleet's external models and LoRA stores name, for its
NetworkPolicy.

Called by :func:`shoal.operator.fleets.reconcile_fleet` on every reconcile (so again at every
periodic re-check) of a fleet whose egress is Restricted (``spec.network.egress.mode``): a
standard NetworkPolicy cannot name a host, so the operator resolves each endpoint's host name
as the fleet's pods would (the cluster's DNS) and the policy lets the pods reach those
addresses on the endpoint's port only (:func:`shoal.planning.network.egress_rules`). A name
that does not resolve gets no rule: its models show the state :data:`UNRESOLVED` in the
fleet's status, with a Warning event, and the ingress falls back from them until it resolves.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from shoal.api.v1alpha1 import ModelFleet
from shoal.planning.external import egress_endpoints
from shoal.planning.status import SpecProblem

log = logging.getLogger(__name__)

#: A model's status state while its endpoint's host name does not resolve.
UNRESOLVED = "EgressHostUnresolved"

#: Seconds to wait for one name (the system resolver has no timeout of its own).
RESOLVE_TIMEOUT_SECONDS = 5.0

Resolver = Callable[[str], list[str]]


def system_resolver(host: str) -> list[str]:
    """Every address (IPv4 and IPv6) the system's resolver gives for ``host``."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class EgressResolution:
    """The addresses of each host name that resolved, and the models whose did not."""

    addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unresolved: dict[str, SpecProblem] = field(default_factory=dict)


def resolve_endpoints(
    fleet: ModelFleet,
    resolver: Resolver = system_resolver,
    timeout: float = RESOLVE_TIMEOUT_SECONDS,
) -> EgressResolution:
    """Resolve the host names of the fleet's external endpoints and LoRA stores
    (:func:`~shoal.planning.external.egress_endpoints`; Restricted egress only;
    addresses and Services of the cluster need no resolving)."""
    if fleet.spec.network.egress.mode != "Restricted":
        return EgressResolution()
    named = [e for e in egress_endpoints(fleet) if e.kind == "name"]
    if not named:
        return EgressResolution()
    addresses: dict[str, tuple[str, ...]] = {}
    unresolved: dict[str, SpecProblem] = {}
    # Not a ``with`` block: it would wait for a resolver that hangs past the timeout.
    pool = ThreadPoolExecutor(max_workers=min(8, len(named)), thread_name_prefix="resolve")
    try:
        futures = {e.host: pool.submit(resolver, e.host) for e in named}
        for endpoint in named:
            why = ""
            try:
                found = futures[endpoint.host].result(timeout=timeout)
                valid = sorted({str(ipaddress.ip_address(a)) for a in found})
            except FutureTimeout:
                valid, why = [], f"no answer in {timeout:g} s"
            except (OSError, ValueError) as exc:
                valid, why = [], str(exc) or type(exc).__name__
            if valid:
                addresses[endpoint.host] = tuple(valid)
                continue
            message = (
                f"host {endpoint.host} of model(s) {', '.join(endpoint.models)} does not "
                f"resolve ({why or 'no addresses'}); the fleet's NetworkPolicy lets no traffic "
                "reach it until it does (re-resolved at every reconcile)"
            )
            log.warning("fleet %s: %s", fleet.metadata.name, message)
            for model in endpoint.models:
                unresolved[model] = SpecProblem(UNRESOLVED, message)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return EgressResolution(addresses, unresolved)
