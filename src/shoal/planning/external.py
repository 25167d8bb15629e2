"""What a fleet's models served outside it (``engine: openai``) add to its desired objects.

Pure functions called by :mod:`shoal.planning.children`:

- :func:`mount_model_keys`: the API keys of the external models whose Secrets their owners
  marked for Shoal and for the endpoint's host (the operator decides which: ``granted``, see
  :mod:`shoal.operator.external`), as files under :data:`~shoal.contract.MODEL_KEYS_DIR` in
  every Ray pod that may host the ingress, one file per model named after it. A key whose
  Secret is not granted is not mounted at all: the ingress then never sends one to that
  endpoint (and says why in its error). A key is never put in the environment,
  ``serveConfigV2``, status or an event.
- :func:`external_hosts`: the hosts the fleet's external models name (the NetworkPolicy's
  annotation, status).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from shoal.api.v1alpha1 import ModelFleet
from shoal.contract import MODEL_KEYS_DIR

#: Name of the projected volume that holds the external models' keys.
MODEL_KEYS_VOLUME = "model-keys"


def external_hosts(fleet: ModelFleet) -> list[str]:
    """Host names (or addresses) of the fleet's external models' endpoints, sorted."""
    hosts = {
        (urlsplit(m.external.base_url).hostname or "").lower()
        for m in fleet.spec.external_models()
        if m.external is not None
    }
    return sorted(h for h in hosts if h)


def mount_model_keys(template: dict[str, Any], fleet: ModelFleet, granted: Collection[str]) -> None:
    """Mount the granted external models' keys read-only at :data:`MODEL_KEYS_DIR`."""
    sources = []
    for m in fleet.spec.external_models():
        ref = m.external.api_key_secret_ref if m.external else None
        if ref is None or m.name not in granted:
            continue
        sources.append({"secret": {"name": ref.name, "items": [{"key": ref.key, "path": m.name}]}})
    if not sources:
        return
    spec, container = template["spec"], template["spec"]["containers"][0]
    spec.setdefault("volumes", []).append(
        {"name": MODEL_KEYS_VOLUME, "projected": {"sources": sources, "defaultMode": 0o440}}
    )
    container.setdefault("volumeMounts", []).append(
        {"name": MODEL_KEYS_VOLUME, "mountPath": MODEL_KEYS_DIR, "readOnly": True}
    )
