"""The environment a Ray started on this machine runs with (``shoal up``, tests, benchmarks).

A Ray cluster gets the fleet's Ray Serve settings from the pod templates the operator renders;
a local Ray gets them from the environment of the process that starts it. This module sets
them around that ``ray.init`` and puts the caller's environment back afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from shoal.contract import FEEDBACK_KEY_ENV, RAY_SERVE_ENV
from shoal.local.ports import free_port

#: Added for a Ray on one machine (``shoal up``, tests, benchmarks): an ingress replica that
#: stops holds its port open this long so outside load balancers can deregister it (30 s by
#: default); here only the local HAProxy is in front, and it retries.
LOCAL_RAY_SERVE_ENV: dict[str, str] = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


#: HAProxy's own metrics and stats listeners, on fixed ports by default (9101, 8404): a local
#: Ray takes free ones instead, so that two can run on one machine (a test beside `shoal up`),
#: outside the kernel's ephemeral range (:mod:`shoal.local.ports`: a port from that range was
#: once taken by another process before HAProxy bound it, and HAProxy did not start).
HAPROXY_PORT_VARIABLES = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")


@contextmanager
def local_ray_env() -> Iterator[None]:
    """Set :data:`RAY_SERVE_ENV` (plus :data:`LOCAL_RAY_SERVE_ENV`, and free ports for
    HAProxy's listeners unless the caller chose them) for a ``ray.init`` that starts a local
    Ray: its processes inherit the environment they start with. The caller's own environment
    is restored afterwards, so handles used from the driver keep Ray's defaults (a separate
    router loop, usable outside asyncio)."""
    ports = {k: str(free_port()) for k in HAPROXY_PORT_VARIABLES if k not in os.environ}
    # One key signs the answers' ids for every replica of this Ray (feedback attribution).
    signing: dict[str, str] = (
        {} if FEEDBACK_KEY_ENV in os.environ else {FEEDBACK_KEY_ENV: secrets.token_hex(32)}
    )
    wanted = {**RAY_SERVE_ENV, **LOCAL_RAY_SERVE_ENV, **ports, **signing}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
