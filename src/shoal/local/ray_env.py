"""The environment a Ray started on this machine runs with (``shoal up``, tests, benchmarks).

A Ray cluster gets the fleet's Ray Serve settings from the pod templates the operator renders;
a local Ray gets them from the environment of the process that starts it. This module sets
them around that ``ray.init`` and puts the caller's environment back afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from shoal.contract import RAY_SERVE_ENV

#: Added for a Ray on one machine (``shoal up``, tests, benchmarks): an ingress replica that
#: stops holds its port open this long so outside load balancers can deregister it (30 s by
#: default); here only the local HAProxy is in front, and it retries.
LOCAL_RAY_SERVE_ENV: dict[str, str] = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


@contextmanager
def local_ray_env() -> Iterator[None]:
    """Set :data:`RAY_SERVE_ENV` (plus :data:`LOCAL_RAY_SERVE_ENV`) for a ``ray.init`` that
    starts a local Ray: its processes inherit the environment they start with. The caller's
    own environment is restored afterwards, so handles used from the driver keep Ray's
    defaults (a separate router loop, usable outside asyncio)."""
    wanted = {**RAY_SERVE_ENV, **LOCAL_RAY_SERVE_ENV}
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
