"""Free TCP ports for servers started on this machine (a local Ray's HAProxy, test servers).

A port chosen by binding port 0 comes from the kernel's ephemeral range (32768-60999 by
default), where every outgoing connection and every "port 0" bind of Ray's own processes also
lands: between the choice and the server's own bind, another process may be handed it, and
the server then fails with "Address already in use". :func:`free_port` draws instead from
:data:`PORT_RANGE`, below the ephemeral range, above Ray's worker ports (10002-19999) and below
Kubernetes' NodePorts (30000-), checks the port on every address (HAProxy binds ``*``), and
never hands the same port out twice in one process.
"""

from __future__ import annotations

import random
import socket

PORT_RANGE = (20000, 29999)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port nothing listens on now, from :data:`PORT_RANGE`, not handed out before by
    this process."""
    low, high = PORT_RANGE
    for _ in range(200):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high} after 200 tries")
