"""What the operator may overwrite or delete: only objects it owns.

A child of a fleet (RayService, Service, router ConfigMap, NetworkPolicy, PodDisruptionBudget,
HTTPRoute) or a policy's artifact ConfigMap is the operator's when its ownerReferences name
that fleet or policy by uid. An object of the same name that someone else made is never
applied over (server-side apply with force would take its fields) nor deleted with the
fleet: :func:`claim` raises :class:`NameTaken`, which the reconcilers report as a condition
(reason ``NameTaken``) and a Warning event; :func:`delete_owned` leaves it alone.

Called by :mod:`shoal.operator.fleets` and :mod:`shoal.operator.policies`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from shoal.operator.gateway import REFUSED_RETRY_SECONDS, KubeGateway

log = logging.getLogger(__name__)


class NameTaken(kopf.TemporaryError):
    """An object of the name the operator would write exists and is not its own. Retried:
    its owner may rename or delete it."""

    reason = "NameTaken"


def owned_by(live: dict[str, Any], kind: str, name: str, uid: str | None) -> bool:
    """Whether ``live`` names ``kind``/``name`` (with ``uid``, where known) as an owner."""
    for ref in (live.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("kind") == kind
            and ref.get("name") == name
            and (not uid or ref.get("uid") == uid)
        ):
            return True
    return False


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    refs = obj["metadata"].get("ownerReferences") or []
    assert refs, f"{obj['kind']}/{obj['metadata']['name']} is rendered without an owner"
    return dict(refs[0])


def claim(obj: dict[str, Any], live: dict[str, Any] | None) -> None:
    """Allow writing the rendered ``obj`` over ``live`` (None: it does not exist) only when
    ``live`` is owned by ``obj``'s owner; :class:`NameTaken` otherwise."""
    if live is None:
        return
    owner = _owner(obj)
    if owned_by(live, owner["kind"], owner["name"], owner.get("uid")):
        return
    what = f"{obj['kind']} {obj['metadata']['name']!r}"
    raise NameTaken(
        f"{what} exists in {obj['metadata'].get('namespace')} and is not this "
        f"{owner['kind']}'s (no ownerReference to {owner['kind']} {owner['name']!r}); the "
        f"operator neither changes nor deletes it: rename or remove it, or rename the "
        f"{owner['kind']}",
        delay=REFUSED_RETRY_SECONDS,
    )


def delete_owned(
    gw: KubeGateway,
    api_version: str,
    kind: str,
    namespace: str,
    name: str,
    owner: tuple[str, str, str | None],
    live: dict[str, Any] | None = None,
) -> bool:
    """Delete ``kind``/``name`` only if ``owner`` (kind, name, uid) owns it, with its uid as
    a precondition (so an object re-made meanwhile by someone else survives). ``live``: the
    object as just read (None: read it now). True when it was deleted."""
    if live is None:
        live = gw.read(api_version, kind, namespace, name)
    if live is None:
        return False
    if not owned_by(live, *owner):
        log.warning(
            "%s %s/%s is not owned by %s %s: left in place", kind, namespace, name, *owner[:2]
        )
        return False
    uid = (live.get("metadata") or {}).get("uid")
    return gw.delete(api_version, kind, namespace, name, uid=uid)
