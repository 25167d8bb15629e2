"""Where the operator may send a request on a RoutingPolicy's behalf.

A policy names URLs the operator calls from inside the cluster: its calibration URI and its
embedder's endpoint (the fit embeds the calibration prompts there, with the policy's API key).
Whoever may write a policy could otherwise have the operator call the node's cloud metadata
service (credentials of the node's identity) or other link-local services. So, before any such
request, :func:`destination_problem`:

- always refuses link-local addresses (169.254.0.0/16, fe80::/10, where the metadata services
  of AWS, GCP, Azure and others live), the known metadata addresses outside them
  (fd00:ec2::254, 100.100.100.200) and metadata host names, multicast and unspecified ones;
- where the operator has an allowlist (``SHOAL_OUTBOUND_ALLOW``, Helm value
  ``operator.outboundAllow``: host names and CIDR ranges, comma-separated), refuses every
  destination outside it.

Every address the host name resolves to is checked. Called by
:mod:`shoal.operator.policies` before it fetches or fits; a refusal is the policy's
``Fitted=False`` condition with its reason, which keeps its fleets from being rendered with it
(:mod:`shoal.planning.verification`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from shoal.planning.status import SpecProblem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Reason of a destination that is never called (link-local, metadata).
REFUSED = "DestinationRefused"
#: Reason of a destination outside the operator's allowlist.
NOT_ALLOWED = "DestinationNotAllowed"

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog",
                            "instance-data", "instance-data.ec2.internal"})  # fmt: skip

Resolver = Callable[[str, int], Sequence[str]]


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Allowlist:
    """The operator-wide allowlist: host names and networks (empty: every destination that
    is not refused outright)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> Allowlist:
        """From ``"embed.example, 10.0.0.0/8, calibration.svc"``; ValueError on a bad entry."""
        hosts, networks = set(), []
        for item in (i.strip().lower() for i in raw.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if not all(c.isalnum() or c in "-.*" for c in item):
                    raise ValueError(f"not a host name or CIDR range: {item!r}") from None
                hosts.add(item)
        return cls(frozenset(hosts), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.hosts or self.networks)

    def admits(self, host: str, addresses: Sequence[IPAddress]) -> bool:
        """Whether ``host`` (by name) or all its ``addresses`` (by network) are listed."""
        host = host.lower()
        if host in self.hosts or any(
            h.startswith("*.") and host.endswith(h[1:]) for h in self.hosts
        ):
            return True
        return bool(addresses) and all(any(a in n for n in self.networks) for a in addresses)


def _never(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_link_local
        or address in METADATA_ADDRESSES
        or address.is_multicast
        or address.is_unspecified
    )


def destination_problem(
    url: str, allow: Allowlist | None = None, resolve: Resolver = _resolve
) -> SpecProblem | None:
    """Why the operator may not call ``url`` (None: it may)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        return SpecProblem(REFUSED, f"{url!r} names no host")
    if host in METADATA_HOSTS:
        return SpecProblem(
            REFUSED, f"{host} is a cloud metadata service; the operator never calls it"
        )
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = [literal] if literal else [ipaddress.ip_address(a) for a in resolve(host, port)]
    except (OSError, ValueError):
        addresses = []  # unresolvable: the request itself fails, with its own error
    for address in addresses:
        if _never(address):
            return SpecProblem(
                REFUSED,
                f"{host} is (or resolves to) {address}, a link-local, multicast or cloud "
                "metadata address; the operator never sends requests there",
            )
    if allow and not allow.admits(host, addresses):
        return SpecProblem(
            NOT_ALLOWED,
            f"{host} is not in the operator's outbound allowlist (SHOAL_OUTBOUND_ALLOW, Helm "
            "value operator.outboundAllow); ask the cluster's operators to add it",
        )
    return None
