"""``shoal render``: the objects the operator would apply for the fleets of a file.

For GitOps review and for scanners, as ``helm template`` is for a chart. Each fleet of the
file is planned by the very functions the operator applies
(:func:`shoal.operator.fleets.plan_settings` and
:func:`shoal.planning.children.desired_children`), with the operator's settings from the
environment (``SHOAL_*``, as the chart sets them); a ``cluster`` policy's router is fitted
from its calibration ConfigMap in the file, as ``shoal up`` does
(:func:`shoal.local.manifests.fit_local_router`).

Above the layers (it joins the operator's settings and the laptop runner's fit), below
:mod:`shoal.cli` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class RenderError(ValueError):
    """The file cannot be rendered (unreadable, invalid, or a fleet that cannot be planned)."""


def render_documents(
    docs: list[Any], *, namespace: str = "default", pod_templates: bool = False
) -> list[dict[str, Any]]:
    """The children of every ModelFleet in ``docs``, in the operator's apply order."""
    from shoal.local.manifests import ManifestError, fit_local_router, parse_fleet_documents
    from shoal.operator.config import OperatorConfig
    from shoal.operator.fleets import plan_settings
    from shoal.planning.children import PlanError, RouterArtifact, desired_children
    from shoal.planning.render import pod_manifests
    from shoal.planning.tenants import access_config

    docs = [_with_namespace(d, namespace) for d in docs if isinstance(d, dict)]
    fleets = [d["metadata"]["name"] for d in docs if d.get("kind") == "ModelFleet"]
    if not fleets:
        raise RenderError("the file has no ModelFleet")
    config = OperatorConfig.from_env()
    out: list[dict[str, Any]] = []
    for name in fleets:
        try:
            manifests = parse_fleet_documents(docs, name)
            blob = fit_local_router(manifests)
        except ManifestError as exc:
            hint = (
                " (add a file that holds it with another -f)"
                if "not in the file" in str(exc)
                else ""
            )
            raise RenderError(f"ModelFleet {name}: {exc}{hint}") from exc
        artifact = None
        if blob is not None:
            from shoal.routing import artifact_checksum

            artifact = RouterArtifact(checksum=artifact_checksum(blob), data=blob)
        fleet = manifests.fleet
        try:
            # Tenants' keys live in Secrets the file does not hold: rendered without tenants
            # (a fleet in mode Tenants then admits nobody, as the operator's would).
            access = access_config(fleet, [], config.access_settings())
            children = desired_children(
                fleet, manifests.policy, artifact, plan_settings(config, fleet), access
            )
        except PlanError as exc:
            raise RenderError(
                f"ModelFleet {name}: fleet and routing policy disagree: {exc}"
            ) from exc
        out += children.objects()
        if pod_templates:
            out += pod_manifests(children.rayservice)
    return out


def _with_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    meta = dict(doc.get("metadata") or {})
    meta.setdefault("namespace", namespace)
    return {**doc, "metadata": meta}


def render_files(
    paths: list[Path], *, namespace: str = "default", pod_templates: bool = False
) -> list[dict[str, Any]]:
    """:func:`render_documents` of multi-document YAML files, read as one."""
    docs = read_files(paths)
    return render_documents(docs, namespace=namespace, pod_templates=pod_templates)


def read_files(paths: list[Path]) -> list[Any]:
    """The documents of multi-document YAML files, in order."""
    docs: list[Any] = []
    for path in paths:
        try:
            docs += list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise RenderError(f"cannot read {path}: {exc}") from exc
    return docs


def engine_arguments(docs: list[Any]) -> list[dict[str, Any]]:
    """Per ModelFleet of ``docs``, what each model's engine is given: vLLM's
    ``engine_kwargs`` as Ray Serve LLM passes them (with ``quantization``,
    ``kv_cache_dtype`` and ``speculative_config`` rendered from the typed fields), llama.cpp's
    arguments and speculative settings. A llamacpp model whose GGUF is a local file shows the
    type its header says (``gguf_type_in_file``)."""
    from pydantic import ValidationError

    from shoal.api.v1alpha1 import ModelFleet
    from shoal.contract.variants import engine_arguments as rendered
    from shoal.contract.variants import local_source_path

    out = []
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "ModelFleet":
            continue
        try:
            fleet = ModelFleet.model_validate(doc)
        except ValidationError as exc:
            name = (doc.get("metadata") or {}).get("name")
            raise RenderError(f"ModelFleet {name}: {exc}") from exc
        models = []
        for model in fleet.spec.models:
            entry: dict[str, Any] = {"name": model.name, "engine": model.engine, "tier": model.tier}
            entry.update(rendered(model))
            path = local_source_path(model.source) if model.engine == "llamacpp" else None
            if path is not None and Path(path).is_file():
                from shoal.serving.engines.llamacpp_speculative import gguf_file_type

                entry["gguf_type_in_file"] = gguf_file_type(path)
            models.append(entry)
        out.append({"fleet": fleet.metadata.name, "models": models})
    if not out:
        raise RenderError("the file has no ModelFleet")
    return out
