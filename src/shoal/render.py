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
    docs: list[Any] = []
    for path in paths:
        try:
            docs += list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise RenderError(f"cannot read {path}: {exc}") from exc
    return render_documents(docs, namespace=namespace, pod_templates=pod_templates)
