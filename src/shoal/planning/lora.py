"""The object-store credentials of a fleet's LoRA adapters, in the Ray pods that need them.

Pure function called by :mod:`shoal.planning.children`: :func:`mount_lora_credentials` mounts,
read-only, the Secret key a model's ``loraStore.credentialsSecretRef`` names (an AWS
shared-credentials file) at :data:`~shoal.contract.lora.LORA_CREDENTIALS_DIR`/<model>, in
the worker groups that host that model's replicas only (the CPU group for a model without
an accelerator, the group of its accelerator type otherwise), and only for the models whose
Secrets their owners granted (``granted``: the operator decides, see
:mod:`shoal.operator.lora`). Ray Serve LLM's downloader reads the file through
``AWS_SHARED_CREDENTIALS_FILE`` (:func:`shoal.contract.lora.lora_store_env`); no credential
is put in the environment, ``serveConfigV2``, status or an event.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from shoal.api.v1alpha1 import ModelFleet
from shoal.contract.lora import LORA_CREDENTIALS_DIR

#: Name of the projected volume that holds the models' object-store credentials.
LORA_CREDENTIALS_VOLUME = "lora-credentials"


def mount_lora_credentials(
    template: dict[str, Any],
    fleet: ModelFleet,
    granted: Collection[str],
    accelerator_type: str | None,
) -> None:
    """Mount the granted credentials of the models whose replicas run in this group (GPU
    models of ``accelerator_type``, or CPU models where it is None)."""
    sources = []
    for m in fleet.spec.models:
        store = m.lora_store
        ref = store.credentials_secret_ref if store else None
        if ref is None or m.name not in granted or not m.lora_adapters:
            continue
        if (m.accelerator.type if m.accelerator else None) != accelerator_type:
            continue
        sources.append({"secret": {"name": ref.name, "items": [{"key": ref.key, "path": m.name}]}})
    if not sources:
        return
    spec, container = template["spec"], template["spec"]["containers"][0]
    spec.setdefault("volumes", []).append(
        {"name": LORA_CREDENTIALS_VOLUME, "projected": {"sources": sources, "defaultMode": 0o440}}
    )
    container.setdefault("volumeMounts", []).append(
        {"name": LORA_CREDENTIALS_VOLUME, "mountPath": LORA_CREDENTIALS_DIR, "readOnly": True}
    )
