"""Generate the CustomResourceDefinitions of ``shoal.dev/v1alpha1`` from the Pydantic models.

Pydantic's JSON Schema is close to what the API server wants but not the same: the API server
needs a *structural* schema (every node typed, no ``$ref``, no ``anyOf`` for optionals, no
``additionalProperties: false``) and understands ``x-kubernetes-*`` extensions. This module
turns one into the other and adds names, printer columns and the status subresource.

Pure functions; ``shoal crds`` (in :mod:`shoal.cli`) writes and checks the files.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from shoal.api.v1alpha1.common import GROUP, VERSION, ApiModel
from shoal.api.v1alpha1.fleet import ModelFleet, ModelFleetSpec, ModelFleetStatus
from shoal.api.v1alpha1.policy import RoutingPolicy, RoutingPolicySpec, RoutingPolicyStatus
from shoal.api.v1alpha1.tenant import Tenant, TenantSpec, TenantStatus

_ALLOWED_KEYS = {
    "description", "type", "format", "default", "enum", "pattern", "maxLength", "minLength",
    "maximum", "minimum", "maxItems", "minItems", "maxProperties", "minProperties",
    "properties", "required", "items", "additionalProperties", "nullable",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-map-type",
}  # fmt: skip


class SchemaError(ValueError):
    """A Pydantic schema construct that has no structural equivalent."""


def structural_schema(model: type[ApiModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model``, ready for a CRD version."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        target.update(node)  # the field's own description/default win over the model's
        node = target
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            options = [o for o in node.pop(combinator) if o != {"type": "null"}]
            if len(options) != 1:
                raise SchemaError(f"{path}: {combinator} with several types is not structural")
            merged = _convert(options[0], defs, path)
            merged.update(node)
            node = merged
    if node.get("default", 0) is None:
        del node["default"]
    node.pop("title", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: _convert(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is False:
                continue  # unknown fields are pruned (and rejected under strict validation)
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out[key] = _convert(value, defs, f"{path}{{}}")
        elif key in _ALLOWED_KEYS:
            out[key] = value
        else:
            raise SchemaError(f"{path}: schema keyword {key!r} has no CRD equivalent")
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path}: every node of a structural schema needs a type")
    if out.get("x-kubernetes-preserve-unknown-fields") and "properties" not in out:
        out.setdefault("type", "object")
    if isinstance(out.get("default"), dict) and "properties" in out:
        out["default"] = _filled_default(out, out["default"])
    return out


def _filled_default(schema: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """An object default with its properties' own defaults filled in.

    The API server checks an object's default against its CEL rules as written, without
    defaulting inside it first, so ``default: {}`` must be spelled out in full.
    """
    filled = dict(value)
    for name, prop in schema["properties"].items():
        if name not in filled and "default" in prop:
            filled[name] = prop["default"]
    return filled


def _ready_column() -> dict[str, Any]:
    return {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether the object is ready.",
    }


def _age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: type[ApiModel],
    status: type[ApiModel],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "shoal", "app.kubernetes.io/part-of": "shoal"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["shoal"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"API version: {GROUP}/{VERSION}.",
                                },
                                "kind": {"type": "string", "description": f"Always {kind}."},
                                "metadata": {"type": "object"},
                                "spec": structural_schema(spec),
                                "status": structural_schema(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def model_fleet_crd() -> dict[str, Any]:
    """The ModelFleet CRD."""
    return _crd(
        kind=ModelFleet.KIND,
        plural=ModelFleet.PLURAL,
        short_names=["fleet", "fleets"],
        description=(ModelFleet.__doc__ or "").strip(),
        spec=ModelFleetSpec,
        status=ModelFleetStatus,
        columns=[
            _ready_column(),
            {
                "name": "Models",
                "type": "string",
                "jsonPath": ".status.readyModels",
                "description": "Models with all desired replicas ready.",
            },
            {
                "name": "Endpoint",
                "type": "string",
                "jsonPath": ".status.endpoint",
                "description": "OpenAI-compatible base URL of the fleet.",
            },
            {
                "name": "Cost/h",
                "type": "string",
                "jsonPath": ".status.costPerHour",
                "description": "Current cost in USD per hour.",
            },
            {
                "name": "Reason",
                "type": "string",
                "priority": 1,
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                "description": "Why the fleet is (not) ready.",
            },
            _age_column(),
        ],
    )


def routing_policy_crd() -> dict[str, Any]:
    """The RoutingPolicy CRD."""
    return _crd(
        kind=RoutingPolicy.KIND,
        plural=RoutingPolicy.PLURAL,
        short_names=["rpol"],
        description=(RoutingPolicy.__doc__ or "").strip(),
        spec=RoutingPolicySpec,
        status=RoutingPolicyStatus,
        columns=[
            _ready_column(),
            {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
            {
                "name": "Alpha",
                "type": "string",
                "jsonPath": ".spec.alpha",
                "description": "Quality weight.",
            },
            {"name": "Clusters", "type": "integer", "jsonPath": ".status.artifact.clusters"},
            {
                "name": "Samples",
                "type": "integer",
                "jsonPath": ".status.artifact.samples",
                "description": "Calibration samples the router was fitted on.",
            },
            _age_column(),
        ],
    )


def tenant_crd() -> dict[str, Any]:
    """The Tenant CRD."""
    return _crd(
        kind=Tenant.KIND,
        plural=Tenant.PLURAL,
        short_names=["tenant"],
        description=(Tenant.__doc__ or "").strip(),
        spec=TenantSpec,
        status=TenantStatus,
        columns=[
            _ready_column(),
            {
                "name": "Fleet",
                "type": "string",
                "jsonPath": ".spec.fleetRef.name",
                "description": "The fleet the tenant may call.",
            },
            {
                "name": "Keys",
                "type": "integer",
                "jsonPath": ".status.keys",
                "description": "API keys resolved from their Secrets.",
            },
            {
                "name": "Cost/h",
                "type": "string",
                "jsonPath": ".status.usage.lastHourCostUsd",
                "description": "Estimated USD spent in the last hour.",
            },
            {
                "name": "Requests/h",
                "type": "integer",
                "jsonPath": ".status.usage.lastHourRequests",
                "description": "Requests in the last hour.",
            },
            {
                "name": "Reason",
                "type": "string",
                "priority": 1,
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                "description": "Why the tenant is (not) ready.",
            },
            _age_column(),
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for every kind of this API version."""
    crds = [model_fleet_crd(), routing_policy_crd(), tenant_crd()]
    return {f"{GROUP}_{c['spec']['names']['plural']}.yaml": c for c in crds}


class _PlainDumper(yaml.SafeDumper):
    """A YAML dumper that writes shared objects out in full: no anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def plain_yaml(data: Any) -> str:
    """YAML text as every CRD generator writes it: key order kept, no anchors (``&id001``)."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, width=100, allow_unicode=True)


def render(crd: dict[str, Any]) -> str:
    """YAML text of a CRD, stable byte for byte."""
    header = "# Generated by `shoal crds` from src/shoal/api/v1alpha1. Do not edit.\n"
    return header + plain_yaml(crd)


def write_crds(out_dir: Path) -> list[Path]:
    """Write every CRD to ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, crd in all_crds().items():
        path = out_dir / name
        path.write_text(render(crd))
        paths.append(path)
    return paths


def stale_crds(out_dir: Path) -> list[str]:
    """Names of CRD files in ``out_dir`` that are missing or differ from the models."""
    stale = []
    for name, crd in all_crds().items():
        path = out_dir / name
        if not path.exists() or path.read_text() != render(crd):
            stale.append(name)
    return stale
