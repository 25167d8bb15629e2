"""The Ray pod templates of a rendered RayService, as plain ``Pod`` objects.

``shoal render --pod-templates`` prints them so that scanners that know only core kinds
(Checkov, kube-score, Pod Security admission) judge the pods KubeRay will create from the
templates; a test creates them in a namespace that enforces the "restricted" Pod Security
Standard. Pure: the RayService in, one Pod per head and worker group out, named
``<rayservice>-head`` and ``<rayservice>-<group>`` and labelled with the node type as KubeRay
labels its pods.
"""

from __future__ import annotations

import copy
from typing import Any

from shoal.planning.network import RAY_NODE_TYPE_LABEL


def _pod(rayservice: dict[str, Any], suffix: str, node_type: str, template: Any) -> dict[str, Any]:
    meta = rayservice["metadata"]
    template = copy.deepcopy(template)
    labels = {**(template.get("metadata") or {}).get("labels", {}), RAY_NODE_TYPE_LABEL: node_type}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{suffix}",
            "namespace": meta.get("namespace"),
            "labels": labels,
        },
        "spec": template["spec"],
    }


def pod_manifests(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    """The head's pod, then one pod per worker group, in the RayService's order."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = [_pod(rayservice, "head", "head", cluster["headGroupSpec"]["template"])]
    for group in cluster.get("workerGroupSpecs") or []:
        pods.append(_pod(rayservice, group["groupName"], "worker", group["template"]))
    return pods
