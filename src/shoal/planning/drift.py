"""Whether a live object already is what the operator would apply (no write needed).

Server-side apply of an unchanged object still costs the API server a full decode, merge and
managed-fields pass; at a thousand fleets that is most of its work. The operator skips the
apply when the live object *covers* the desired one: every field the operator sets is present
with the same value. Fields others add (defaults, status, KubeRay's own) do not matter.
"""

from __future__ import annotations

from typing import Any


def covers(live: Any, desired: Any) -> bool:
    """True when ``live`` holds every field of ``desired`` with an equal value.

    Mappings are compared key by key (extra keys in ``live`` are fine); lists element by
    element and of the same length (a list the operator sets is owned as a whole); scalars by
    equality, with integers and floats of the same value equal (JSON does not tell them apart).
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            k in live and covers(live[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(covers(a, b) for a, b in zip(live, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return type(live) is type(desired) and live == desired
    return bool(live == desired)


def needs_apply(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """True unless ``live`` exists and already covers ``desired`` (metadata, spec, data)."""
    if live is None:
        return True
    if (live.get("metadata") or {}).get("deletionTimestamp"):
        return True
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "status")}
    return not covers(live, body)
