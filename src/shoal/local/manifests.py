"""Read a fleet from a multi-document YAML file (the quickstart) and fit its router locally.

``shoal up -f fleet.yaml`` reads the same objects a platform team applies with ``kubectl``:
a ``ModelFleet``, the ``RoutingPolicy`` it references and the ``ConfigMap`` holding the
policy's calibration data. :func:`load_fleet_file` validates them with the API models and
:func:`fit_local_router` fits the router artifact from the ConfigMap, as the operator
would in a cluster. Other kinds in the file are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shoal.api.v1alpha1 import ModelFleet, RoutingPolicy


class ManifestError(ValueError):
    """The file does not describe one runnable fleet."""


@dataclass
class FleetManifests:
    """One fleet, its policy and the ConfigMaps of the file."""

    fleet: ModelFleet
    policy: RoutingPolicy
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.fleet.metadata.namespace or "default"

    def calibration_data(self) -> tuple[str, str] | None:
        """``(source name, text)`` of the policy's calibration ConfigMap key, if any."""
        cal = self.policy.spec.calibration
        if cal is None:
            return None
        if cal.config_map_ref is None:
            raise ManifestError(
                f"RoutingPolicy {self.policy.metadata.name}: calibration from {cal.uri} cannot "
                "be fetched locally; put it in a ConfigMap in the same file"
            )
        ref = cal.config_map_ref
        data = self.config_maps.get(ref.name)
        if data is None:
            raise ManifestError(
                f"ConfigMap {ref.name} (the policy's calibration) is not in the file"
            )
        if ref.key not in data:
            raise ManifestError(f"ConfigMap {ref.name} has no key {ref.key!r}")
        return f"configmap/{ref.name}/{ref.key}", data[ref.key]


def parse_fleet_documents(docs: list[Any], fleet_name: str | None = None) -> FleetManifests:
    """The fleet (``fleet_name``, or the only one), its policy and the ConfigMaps."""
    fleets: list[ModelFleet] = []
    policies: dict[str, RoutingPolicy] = {}
    config_maps: dict[str, dict[str, str]] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind")
        try:
            if kind == "ModelFleet":
                fleets.append(ModelFleet.model_validate(doc))
            elif kind == "RoutingPolicy":
                p = RoutingPolicy.model_validate(doc)
                policies[p.metadata.name] = p
            elif kind == "ConfigMap":
                name = doc.get("metadata", {}).get("name")
                config_maps[str(name)] = {
                    str(k): str(v) for k, v in (doc.get("data") or {}).items()
                }
        except ValueError as exc:
            raise ManifestError(f"invalid {kind}: {exc}") from exc
    if fleet_name is not None:
        fleets = [f for f in fleets if f.metadata.name == fleet_name]
    if len(fleets) != 1:
        names = ", ".join(f.metadata.name for f in fleets) or "none"
        raise ManifestError(f"expected exactly one ModelFleet (found: {names}); pick one by name")
    fleet = fleets[0]
    ref = fleet.spec.routing_policy_ref.name
    if ref not in policies:
        raise ManifestError(
            f"ModelFleet {fleet.metadata.name} refers to RoutingPolicy {ref}, "
            "which is not in the file"
        )
    return FleetManifests(fleet, policies[ref], config_maps)


def load_fleet_file(path: str | Path, fleet_name: str | None = None) -> FleetManifests:
    """Parse a multi-document YAML file into a fleet, its policy and ConfigMaps."""
    try:
        docs = list(yaml.safe_load_all(Path(path).read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    return parse_fleet_documents(docs, fleet_name)


def fit_local_router(manifests: FleetManifests, embedder_name: str | None = None) -> bytes | None:
    """The router artifact for a ``cluster`` policy, fitted from its ConfigMap (None for
    ``static``). Checks that the calibration scores exactly the fleet's models.
    ``embedder_name`` replaces the policy's embedder (see ``fit_policy_router``)."""
    from shoal.routing import fit_policy_router, parse_calibration

    spec = manifests.policy.spec
    if spec.strategy != "cluster":
        return None
    found = manifests.calibration_data()
    assert found is not None  # the API requires calibration for the cluster strategy
    source, text = found
    samples = parse_calibration(text.encode(), source=source, fmt="jsonl")
    fleet_models = {m.name for m in manifests.fleet.spec.models}
    scored = set(samples[0].scores) if samples else set()
    if not scored <= fleet_models:
        raise ManifestError(
            f"calibration scores models the fleet lacks: {', '.join(sorted(scored - fleet_models))}"
        )
    return fit_policy_router(spec, samples, embedder_name=embedder_name)
