"""Names and labels of the objects Shoal creates for a fleet. Stable: same fleet, same names."""

from __future__ import annotations

from shoal.api.v1alpha1 import GROUP

FLEET_LABEL = f"{GROUP}/fleet"
POLICY_LABEL = f"{GROUP}/routing-policy"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = {"app.kubernetes.io/managed-by": "shoal", "app.kubernetes.io/part-of": "shoal"}
#: Annotation on the RayService with the router artifact's checksum (rolls pods on change).
ARTIFACT_ANNOTATION = f"{GROUP}/router-artifact"
#: Key of the artifact in the router ConfigMaps' binaryData.
ARTIFACT_KEY = "router.bin"
#: Where Ray pods see the router artifact.
ARTIFACT_MOUNT_DIR = "/etc/shoal/router"
#: Key of the completion-id signing key in the fleet's feedback-key Secret.
FEEDBACK_KEY_KEY = "key"
#: Where Ray pods see the fleet's feedback-key Secret (a file per key).
FEEDBACK_KEY_MOUNT_DIR = "/etc/shoal/feedback"
#: Port of Ray Serve's HTTP proxy, which serves the fleet endpoint.
SERVE_PORT = 8000


def rayservice_name(fleet: str) -> str:
    """The fleet's RayService."""
    return fleet


def router_configmap_name(fleet: str) -> str:
    """ConfigMap holding the router artifact a fleet serves."""
    return f"{fleet}-router"


def service_name(fleet: str) -> str:
    """The fleet endpoint's Service."""
    return fleet


def network_policy_name(fleet: str) -> str:
    """The NetworkPolicy that guards a fleet's Ray pods."""
    return fleet


def disruption_budget_name(fleet: str) -> str:
    """The PodDisruptionBudget of a fleet's Ray workers."""
    return f"{fleet}-workers"


def http_route_name(fleet: str) -> str:
    """The HTTPRoute that attaches a fleet's Service to its Gateways."""
    return fleet


def feedback_key_secret_name(fleet: str) -> str:
    """Secret holding the key that signs a fleet's completion ids (the same in every replica)."""
    return f"{fleet}-feedback-key"


def policy_artifact_configmap_name(policy: str) -> str:
    """ConfigMap holding the artifact fitted for a RoutingPolicy."""
    return f"{policy}-router-artifact"


def endpoint_url(fleet: str, namespace: str) -> str:
    """OpenAI-compatible base URL of the fleet inside the cluster."""
    return f"http://{service_name(fleet)}.{namespace}.svc:{SERVE_PORT}/v1"


def fleet_labels(fleet: str, component: str) -> dict[str, str]:
    """Labels on every child of a fleet."""
    return {**MANAGED_BY, FLEET_LABEL: fleet, COMPONENT_LABEL: component}
