"""Kubernetes events about Shoal's objects, posted through kopf.

kopf posts events from a queue that exists only inside a running operator; reconcilers are
also called directly (tests, tools), where an event is logged instead of posted.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

log = logging.getLogger(__name__)


def post(body: Any, *, warning: bool, reason: str, message: str) -> None:
    """Post a Normal or Warning event about ``body``."""
    try:
        (kopf.warn if warning else kopf.info)(dict(body), reason=reason, message=message)
    except LookupError:  # no kopf event queue: not inside a running operator
        log.log(logging.WARNING if warning else logging.INFO, "%s: %s", reason, message)
