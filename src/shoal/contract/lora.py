"""A model's LoRA adapters: where each lives, the names clients and the router use for them,
and what the model's replicas need to reach their object store.

Called by :mod:`shoal.serving.engines.vllm` (Ray Serve LLM's ``lora_config`` and the
replica's environment), :mod:`shoal.serving.adapters` and :mod:`shoal.serving.ranking` (an
adapter as a routable model, ``<model>:<adapter>``), :class:`shoal.contract.BuildArgs`
(``staticOrder`` may name adapters) and :mod:`shoal.planning.lora` (the credentials' mount).

Ray Serve LLM downloads adapters itself, with boto3 for ``s3://`` (it honours the standard
AWS settings: ``AWS_ENDPOINT_URL_S3`` for an S3-compatible store, ``AWS_DEFAULT_REGION``,
``AWS_SHARED_CREDENTIALS_FILE``). Credentials travel as a file only: the operator mounts the
Secret the fleet names (where its owner allowed it) at :data:`LORA_CREDENTIALS_DIR`
``/<model>``, and the replica's environment carries that file's path, never a key.

Pure functions over the API models; no Ray, vLLM or boto3 import.
"""

from __future__ import annotations

import os
import posixpath

from shoal.api.v1alpha1 import ModelFleetSpec, ModelSpec

#: Where the operator mounts each model's object-store credentials file, one per model.
LORA_CREDENTIALS_DIR = "/var/run/shoal/lora-credentials"
#: Overrides :data:`LORA_CREDENTIALS_DIR` where the app is built (local runs and tests).
LORA_CREDENTIALS_DIR_ENV = "SHOAL_LORA_CREDENTIALS_DIR"


def adapter_source(model: ModelSpec, name: str) -> str:
    """The folder of the model's adapter ``name``: its own source, else under the store's
    ``uri`` (the API's rules guarantee one of the two)."""
    adapter = next(a for a in model.lora_adapters if a.name == name)
    if adapter.source is not None:
        return adapter.source.rstrip("/")
    store = model.lora_store
    if store is None or store.uri is None:
        raise ValueError(f"model {model.name}: LoRA adapter {name} has no source")
    return f"{store.uri.rstrip('/')}/{name}"


def adapter_folder(model: ModelSpec) -> str | None:
    """The one folder all the model's adapters sit in (Ray Serve LLM's
    ``dynamic_lora_loading_path``); None without adapters; ValueError when they do not
    share one."""
    if not model.lora_adapters:
        return None
    parents = set()
    for adapter in model.lora_adapters:
        source = adapter_source(model, adapter.name)
        parent, leaf = posixpath.split(source)
        if not source.startswith(("s3://", "gs://")) or leaf != adapter.name:
            raise ValueError(
                f"model {model.name}: LoRA adapter {adapter.name} must live at "
                f"s3://.../{adapter.name} or gs://.../{adapter.name} (got {source})"
            )
        parents.add(parent)
    if len(parents) != 1:
        raise ValueError(f"model {model.name}: LoRA adapters must share one parent folder")
    return parents.pop()


def adapter_route(model: str, adapter: str) -> str:
    """The name clients and the router use for an adapter: ``<model>:<adapter>``."""
    return f"{model}:{adapter}"


def adapter_routes(fleet: ModelFleetSpec) -> dict[str, tuple[str, str]]:
    """``<model>:<adapter>`` -> (model, adapter), for every adapter of the fleet."""
    return {
        adapter_route(m.name, a.name): (m.name, a.name)
        for m in fleet.models
        for a in m.lora_adapters
    }


def routable_models(fleet: ModelFleetSpec) -> list[str]:
    """Every name a ranking may hold: the fleet's models, then their adapters."""
    return [m.name for m in fleet.models] + list(adapter_routes(fleet))


def credentials_dir() -> str:
    """Where the models' credentials files are (:data:`LORA_CREDENTIALS_DIR` unless the
    environment says otherwise)."""
    return os.environ.get(LORA_CREDENTIALS_DIR_ENV) or LORA_CREDENTIALS_DIR


def lora_store_env(model: ModelSpec, folder: str | None = None) -> dict[str, str]:
    """The environment a model's replicas reach its adapters' store with: the endpoint, the
    region and the path of the credentials file (no secret: the file is mounted)."""
    store = model.lora_store
    if store is None or not model.lora_adapters:
        return {}
    env: dict[str, str] = {}
    if store.endpoint is not None:
        env["AWS_ENDPOINT_URL_S3"] = store.endpoint
    if store.region is not None:
        env["AWS_DEFAULT_REGION"] = store.region
    if store.credentials_secret_ref is not None:
        env["AWS_SHARED_CREDENTIALS_FILE"] = posixpath.join(folder or credentials_dir(), model.name)
    return env
