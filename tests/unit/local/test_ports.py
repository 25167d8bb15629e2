"""Free ports for local servers come from outside the kernel's ephemeral range, are checked
on every address, and are never handed out twice (a local Ray's HAProxy once lost an
ephemeral port to another process between the choice and its bind)."""

from __future__ import annotations

import socket

import pytest

from shoal.local import ports
from shoal.local.ray_env import HAPROXY_PORT_VARIABLES, local_ray_env


def test_ports_come_from_outside_the_ephemeral_range_and_once_each() -> None:
    low, high = ports.PORT_RANGE
    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        eph_low, eph_high = (int(x) for x in fh.read().split())
    assert high < eph_low or low > eph_high
    got = [ports.free_port() for _ in range(50)]
    assert len(set(got)) == 50 and all(low <= p <= high for p in got)


def test_a_port_in_use_on_any_address_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        taken = busy.getsockname()[1]
        busy.listen()
        draws = iter([taken, 24680])
        monkeypatch.setattr(ports.random, "randint", lambda a, b: next(draws))
        monkeypatch.setattr(ports, "_handed_out", set())
        assert ports.free_port() == 24680


def test_a_local_rays_haproxy_gets_ports_from_that_range(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HAPROXY_PORT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    import os

    with local_ray_env():
        chosen = [int(os.environ[name]) for name in HAPROXY_PORT_VARIABLES]
    low, high = ports.PORT_RANGE
    assert all(low <= p <= high for p in chosen) and len(set(chosen)) == 2
    assert all(name not in os.environ for name in HAPROXY_PORT_VARIABLES)  # restored
