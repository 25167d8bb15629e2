"""The operator's one door to the Kubernetes API.

Everything the operator reads or writes goes through :class:`KubeGateway`: server-side apply
with Shoal's field manager, explicit status patches, gets, lists and deletes. API failures
come out in kopf's vocabulary: conflicts, throttling, server errors and outages become
:class:`kopf.TemporaryError` (retried with backoff); an object the API server rejects as
invalid becomes :class:`InvalidObject` for the caller to report.
"""

from __future__ import annotations

import json
from typing import Any

import kopf
import urllib3
from kubernetes import client

from shoal.operator.cache import WATCHED, ObjectCache

FIELD_MANAGER = "shoal-operator"

#: (apiVersion, kind) -> plural, for every kind the operator touches.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("cilium.io/v2", "CiliumNetworkPolicy"): "ciliumnetworkpolicies",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("ray.io/v1", "RayService"): "rayservices",
    ("shoal.dev/v1alpha1", "ModelFleet"): "modelfleets",
    ("shoal.dev/v1alpha1", "RoutingPolicy"): "routingpolicies",
    ("shoal.dev/v1alpha1", "Tenant"): "tenants",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
}


class InvalidObject(kopf.PermanentError):
    """The API server rejected an object the operator rendered (422)."""

    reason = "Rejected"


class Forbidden(kopf.TemporaryError):
    """The operator's identity may not do this (403). Retried: RBAC can be fixed in place."""

    reason = "Forbidden"


class NotServed(kopf.TemporaryError):
    """The API server does not serve the kind (404 on apply: its CRD, e.g. KubeRay's, is not
    installed). Retried: the CRD can be installed later."""

    reason = "KindNotServed"


#: Errors of writing a child object that the reconcilers report as conditions and events.
WRITE_ERRORS: tuple[type[InvalidObject | Forbidden | NotServed], ...] = (
    InvalidObject,
    Forbidden,
    NotServed,
)
#: How long to wait before retrying after a write the cluster refused (RBAC, missing CRD).
REFUSED_RETRY_SECONDS = 30.0


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """REST path of a namespaced object (or of its collection when ``name`` is None)."""
    plural = PLURALS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def _message(body: bytes | None) -> str:
    try:
        return str(json.loads(body or b"{}").get("message", ""))
    except ValueError:
        return (body or b"").decode(errors="replace")[:500]


class KubeGateway:
    """Narrow, synchronous Kubernetes access for the operator's handlers."""

    def __init__(
        self, api: client.ApiClient, timeout: float = 30.0, cache: ObjectCache | None = None
    ) -> None:
        self._api = api
        self._timeout = timeout
        #: The operator's watch cache (None: every read asks the API server).
        self.cache = cache
        #: Objects :meth:`create` made or found existing: (kind, namespace, name).
        self._created: set[tuple[str, str, str]] = set()

    def _remember(self, obj: dict[str, Any] | None) -> None:
        if obj and obj.get("kind") == "Secret":
            return  # key material stays out of the cache (read_secret reads every time)
        if self.cache is not None and obj and obj.get("metadata", {}).get("name"):
            self.cache.put(obj)

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        exists_ok: bool = False,
    ) -> dict[str, Any] | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        # Bodies stay dicts: the client serialises JSON and structured YAML (apply) alike.
        method, url, headers, body, post = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self._api.call_api(
                method,
                url,
                header_params=headers,
                body=body,
                post_params=post,
                _request_timeout=self._timeout,
            )
            resp.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise kopf.TemporaryError(f"Kubernetes API unreachable: {exc}", delay=5) from exc
        status, data = resp.status, resp.data
        if status == 404 or (status == 409 and exists_ok):
            return None
        if status == 422:
            raise InvalidObject(f"{method} {path} rejected: {_message(data)}")
        if status == 403:
            raise Forbidden(f"{method} {path}: {_message(data)}", delay=REFUSED_RETRY_SECONDS)
        if status in (409, 429) or status >= 500:
            raise kopf.TemporaryError(f"{method} {path}: {status} {_message(data)}", delay=3)
        if status >= 400:
            raise kopf.PermanentError(f"{method} {path}: {status} {_message(data)}")
        return json.loads(data) if data else {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist; watched kinds from the watch cache."""
        if self.cache is not None and (api_version, kind) in WATCHED:
            key = (api_version, kind, namespace, name)
            if self.cache.is_gone(key):
                return None
            cached = self.cache.get(key)
            if cached is not None or (api_version, kind) in self.cache.authoritative:
                return cached
        return self.read(api_version, kind, namespace, name)

    def read(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the API server has it now (a GET, whatever the cache holds)."""
        out = self._request("GET", resource_path(api_version, kind, namespace, name))
        if self.cache is not None:
            if out is None:
                self.cache.drop((api_version, kind, namespace, name))
            else:
                self._remember(out)
        return out

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret as the API server has it now (a GET; never cached, never logged)."""
        out = self._request("GET", resource_path("v1", "Secret", namespace, name))
        if out is not None:
            out.setdefault("kind", "Secret")
        return out

    def known(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> tuple[bool, dict[str, Any] | None]:
        """What the cache knows without asking: (known, object); (True, None): known absent."""
        if self.cache is None:
            return False, None
        key = (api_version, kind, namespace, name)
        if self.cache.is_gone(key):
            return True, None
        cached = self.cache.get(key)
        return cached is not None, cached

    def list_all(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        """Objects of a kind in every namespace."""
        path = resource_path(api_version, kind, "-").replace("/namespaces/-", "")
        out = self._request("GET", path)
        return list((out or {}).get("items") or [])

    def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace, optionally filtered by labels."""
        query = []
        if labels:
            query.append(("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items())))
        out = self._request("GET", resource_path(api_version, kind, namespace), query=query)
        return list((out or {}).get("items") or [])

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` as Shoal's field manager; returns the live object."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        out = self._request(
            "PATCH",
            path,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        if out is None:  # apply creates what is missing, so 404 means the kind is not served
            owner = " (KubeRay)" if obj["apiVersion"].startswith("ray.io/") else ""
            raise NotServed(
                f"the API server does not serve {obj['kind']} ({obj['apiVersion']}); "
                f"install its CRD{owner}",
                delay=REFUSED_RETRY_SECONDS,
            )
        self._remember(out)
        return out

    def remembers(self, kind: str, namespace: str | None, name: str) -> bool:
        """True when this gateway created (or found existing) that object already."""
        return (kind, namespace, name) in self._created

    def create(self, obj: dict[str, Any], *, remembered: bool = True) -> bool:
        """Create ``obj`` unless an object of its name exists, which is neither read nor
        changed (for Secrets the operator makes once and never reads back: ``create`` is the
        only verb it needs). True when this call created it.

        ``remembered``: skip the request for an object this gateway already created or found
        existing (the periodic re-check passes False, so a deleted one is made again).
        """
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        if remembered and self.remembers(*key):
            return False
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        out = self._request("POST", path, body=obj, exists_ok=True)
        self._created.add(key)
        return out is not None

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource (``None`` values delete fields)."""
        path = resource_path(api_version, kind, namespace, name) + "/status"
        out = self._request(
            "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
        )
        self._remember(out)
        return out

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, uid: str | None = None
    ) -> bool:
        """Delete an object; False when it was already gone. ``uid``: only the object with
        that uid (a precondition: another object of the name is left alone, 409)."""
        path = resource_path(api_version, kind, namespace, name)
        body = {"preconditions": {"uid": uid}} if uid else None
        out = self._request(
            "DELETE", path, body=body, content_type="application/json" if body else None
        )
        if self.cache is not None:
            self.cache.drop((api_version, kind, namespace, name))
        return out is not None
