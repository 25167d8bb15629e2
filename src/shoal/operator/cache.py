"""The operator's in-memory view of the objects it watches and writes.

kopf's watches feed it (fleets, policies, tenants, RayServices; never Secrets), and so does
every answer of the operator's own writes (an apply or a status patch returns the object as
stored). Reads of a watched kind are answered from here instead of with a GET; reads of
children the operator wrote tell a reconcile whether an apply would change anything (see
:mod:`shoal.planning.drift`).

Newer wins: an object replaces the cached copy only if its resourceVersion is not older, so a
watch event that lags behind the operator's own write never rolls the copy back. A deleted
object leaves a tombstone, so a late event cannot bring it back.

Each copy is kept as compact JSON and decoded on every read: one bytes object per object
instead of thousands of small dicts and strings shared with kopf's event bodies (which kept
those bodies alive and scattered long-lived objects among a burst's short-lived ones), and a
reader gets a copy of its own that it may change.
"""

from __future__ import annotations

import json
import threading
from typing import Any

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name

#: Kinds whose every change reaches the cache through a watch: a miss is a real miss only
#: after the watch has listed them; before that the gateway asks the API server.
WATCHED = {
    ("shoal.dev/v1alpha1", "ModelFleet"),
    ("shoal.dev/v1alpha1", "RoutingPolicy"),
    ("shoal.dev/v1alpha1", "Tenant"),
    ("ray.io/v1", "RayService"),
}


def _version(obj: dict[str, Any]) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace") or "default", meta["name"])


class ObjectCache:
    """Latest known copy of each object, by (apiVersion, kind, namespace, name)."""

    def __init__(self) -> None:
        self._objects: dict[Key, tuple[int | None, bytes]] = {}
        #: Kinds the cache holds every object of (kopf indexes them before any handler runs):
        #: a miss means the object does not exist.
        self.authoritative: set[tuple[str, str]] = set()
        self._gone: dict[Key, int | None] = {}
        self._guard = threading.Lock()

    def put(self, obj: dict[str, Any]) -> None:
        """Remember ``obj`` unless a newer copy (or its deletion) is known already."""
        key, version = key_of(obj), _version(obj)
        meta = obj.get("metadata") or {}
        if "managedFields" in meta:  # large and never read: not kept
            obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
        encoded = json.dumps(obj, separators=(",", ":")).encode()
        with self._guard:
            known = self._objects.get(key)
            old = known[0] if known else self._gone.get(key)
            if version is not None and old is not None and version < old:
                return
            self._gone.pop(key, None)
            self._objects[key] = (version, encoded)

    def drop(self, key: Key, version: int | None = None) -> None:
        """The object is gone (deleted by the operator or seen deleted by a watch)."""
        with self._guard:
            known = self._objects.pop(key, None)
            self._gone[key] = version if version is not None else (known[0] if known else None)

    def deleted(self, obj: dict[str, Any]) -> None:
        """A watch saw ``obj`` deleted."""
        self.drop(key_of(obj), _version(obj))

    def get(self, key: Key) -> dict[str, Any] | None:
        """A copy of the cached object (None: not known, or gone)."""
        with self._guard:
            known = self._objects.get(key)
        return json.loads(known[1]) if known else None

    def is_gone(self, key: Key) -> bool:
        """True when the object is known to be absent."""
        with self._guard:
            return key in self._gone

    def keys(self, api_version: str, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every cached object of a kind."""
        with self._guard:
            return [(k[2], k[3]) for k in self._objects if k[0] == api_version and k[1] == kind]
