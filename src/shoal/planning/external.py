"""What a fleet's models served outside it (``engine: openai``) add to its desired objects.

Pure functions called by :mod:`shoal.planning.children`:

- :func:`mount_model_keys`: the API keys of the external models whose Secrets their owners
  marked for Shoal and for the endpoint's host (the operator decides which: ``granted``, see
  :mod:`shoal.operator.external`), as files under :data:`~shoal.contract.MODEL_KEYS_DIR` in
  every Ray pod that may host the ingress, one file per model named after it. A key whose
  Secret is not granted is not mounted at all: the ingress then never sends one to that
  endpoint (and says why in its error). A key is never put in the environment,
  ``serveConfigV2``, status or an event.
- :func:`external_hosts`: the hosts the fleet's external models name;
- :func:`external_endpoints`: each endpoint's host and port, and whether it is an address,
  a Service of the cluster or a name the operator resolves (the NetworkPolicy's egress rules
  when egress is Restricted, :mod:`shoal.planning.network`);
- :func:`egress_endpoints`: those, and the S3-compatible stores (``loraStore.endpoint``) the
  fleet's LoRA adapters are loaded from: every endpoint a Restricted fleet must reach.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal
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


@dataclass(frozen=True)
class ExternalEndpoint:
    """Where the external models of a fleet connect: one host and port, the models that name
    it, and what the host is: an IP ``address``, a ``service`` of the cluster
    (``name.namespace.svc[.domain]``, or a bare name: a Service of the fleet's namespace), or a
    ``name`` the operator resolves (``localhost`` too)."""

    host: str
    port: int
    kind: Literal["address", "service", "name"]
    models: tuple[str, ...]

    @property
    def service_namespace(self) -> str | None:
        """The namespace of a ``service`` endpoint (None: the fleet's own)."""
        labels = self.host.split(".")
        return labels[1] if self.kind == "service" and len(labels) > 2 else None


def _host_kind(host: str) -> Literal["address", "service", "name"]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        if (len(labels) == 1 and host != "localhost") or (len(labels) >= 3 and labels[2] == "svc"):
            return "service"
        return "name"
    return "address"


def _endpoints(urls: list[tuple[str, str]]) -> list[ExternalEndpoint]:
    """One endpoint per (host, port) of ``(model, url)`` pairs, sorted."""
    found: dict[tuple[str, int], list[str]] = {}
    for model, raw in urls:
        url = urlsplit(raw)
        host = (url.hostname or "").lower()
        if not host:
            continue
        port = url.port or (443 if url.scheme == "https" else 80)
        models = found.setdefault((host, port), [])
        if model not in models:
            models.append(model)
    return [
        ExternalEndpoint(host, port, _host_kind(host), tuple(sorted(models)))
        for (host, port), models in sorted(found.items())
    ]


def _external_urls(fleet: ModelFleet) -> list[tuple[str, str]]:
    return [
        (m.name, str(m.external.base_url))
        for m in fleet.spec.external_models()
        if m.external is not None
    ]


def _lora_store_urls(fleet: ModelFleet) -> list[tuple[str, str]]:
    """The S3-compatible stores the models' adapters are loaded from (AWS S3 and GCS, with no
    endpoint of their own, are not named here: see docs/sre.md, Egress)."""
    return [
        (m.name, str(m.lora_store.endpoint))
        for m in fleet.spec.models
        if m.lora_adapters and m.lora_store is not None and m.lora_store.endpoint is not None
    ]


def external_endpoints(fleet: ModelFleet) -> list[ExternalEndpoint]:
    """The fleet's external models' endpoints, one per (host, port), sorted."""
    return _endpoints(_external_urls(fleet))


def egress_endpoints(fleet: ModelFleet) -> list[ExternalEndpoint]:
    """Every endpoint outside the fleet its pods must reach: the external models' and the
    LoRA adapters' S3-compatible stores, one per (host, port) with the models that name it,
    sorted."""
    return _endpoints(_external_urls(fleet) + _lora_store_urls(fleet))


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
