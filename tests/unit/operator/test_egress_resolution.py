"""The operator resolves the host names of a Restricted fleet's external endpoints for its
NetworkPolicy, and says which did not resolve."""

from __future__ import annotations

import socket
import threading

from tests.unit.planning.test_network_egress import external, hybrid

from shoal.operator.egress import UNRESOLVED, resolve_endpoints


def test_names_resolve_addresses_and_services_are_left_alone() -> None:
    asked: list[str] = []

    def resolver(host: str) -> list[str]:
        asked.append(host)
        return ["203.0.113.9", "203.0.113.9", "2001:db8::1"]

    f = hybrid(
        external("big", "https://api.example.com/v1"),
        external("pool", "http://10.1.2.3:8000/v1"),
        external("svc", "http://big-pool.llm.svc:8000/v1"),
    )
    out = resolve_endpoints(f, resolver)
    assert asked == ["api.example.com"]
    assert out.addresses == {"api.example.com": ("2001:db8::1", "203.0.113.9")}
    assert out.unresolved == {}


def test_a_name_that_fails_or_hangs_is_reported_for_each_model_naming_it() -> None:
    release = threading.Event()

    def resolver(host: str) -> list[str]:
        if host == "slow.example.com":
            release.wait(5)
            return ["203.0.113.1"]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    f = hybrid(
        external("a", "https://gone.example.com/v1"),
        external("b", "https://gone.example.com/v1"),
        external("c", "https://slow.example.com/v1"),
    )
    try:
        out = resolve_endpoints(f, resolver, timeout=0.2)
    finally:
        release.set()
    assert out.addresses == {}
    assert {m: p.reason for m, p in out.unresolved.items()} == dict.fromkeys("abc", UNRESOLVED)
    assert "gone.example.com" in out.unresolved["a"].message
    assert "Name or service not known" in out.unresolved["a"].message
    assert "no answer in 0.2 s" in out.unresolved["c"].message


def test_open_egress_resolves_nothing() -> None:
    def resolver(host: str) -> list[str]:
        raise AssertionError("not asked")

    f = hybrid(external("big", "https://api.example.com/v1"), mode="Open")
    assert resolve_endpoints(f, resolver).addresses == {}
