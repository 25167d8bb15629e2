"""What the operator reads on a RoutingPolicy's behalf, and the limits it reads it under.

Called by :mod:`shoal.operator.policies` when it fits a router:

- **Embedder API keys.** A policy names a Secret key (``embedder.apiKeySecretRef``); anyone
  who may write a RoutingPolicy could otherwise have the operator read any Secret of the
  namespace and send it as a bearer token to any endpoint. So the operator uses a Secret only
  when its owner marked it for Shoal (label :data:`SECRET_LABEL` ``"true"``) and named the
  embedding endpoint's host in the annotation :data:`ALLOWED_HOSTS_ANNOTATION` (a
  comma-separated list of host names). :func:`secret_grant_problem` says what is missing.
- **Calibration URLs.** :func:`fetch_calibration` reads an http(s) calibration URI with a
  timeout on the whole transfer, a size cap, and redirects followed only within the same
  scheme, host and port.

Each refusal is a :class:`~shoal.planning.status.SpecProblem` with its own reason, which
the policy's ``Fitted`` condition and a Warning event carry. No Secret value ever appears in
a message.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from shoal.api.v1alpha1 import GROUP
from shoal.planning.status import SpecProblem

#: Label a Secret's owner sets (to "true") to let Shoal use the Secret as an embedder key.
SECRET_LABEL = f"{GROUP}/embedder-key"
#: Annotation listing the hosts (comma-separated) a marked Secret's key may be sent to.
ALLOWED_HOSTS_ANNOTATION = f"{GROUP}/allowed-hosts"

#: Reasons of a Secret the operator refuses to use (the policy's artifact is withdrawn).
REFUSALS = frozenset({"EmbedderSecretNotMarked", "EmbedderHostNotAllowed"})

#: Largest calibration file the operator downloads.
MAX_CALIBRATION_BYTES = 64 * 1024 * 1024
#: Seconds a calibration download may take, all of it.
CALIBRATION_TIMEOUT_SECONDS = 30.0
#: Redirects followed (same scheme, host and port only).
MAX_REDIRECTS = 5


class SourceRefused(Exception):
    """A source the operator will not read (or cannot, in time); carries the problem."""

    def __init__(self, problem: SpecProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def allowed_hosts(secret: dict[str, Any]) -> list[str]:
    """The hosts a Secret allows its key to be sent to (lower-case, empty when none)."""
    raw = ((secret.get("metadata") or {}).get("annotations") or {}).get(ALLOWED_HOSTS_ANNOTATION)
    return [h.strip().lower() for h in (raw or "").split(",") if h.strip()]


def secret_grant_problem(
    secret: dict[str, Any],
    endpoint: str,
    *,
    label: str = SECRET_LABEL,
    reasons: tuple[str, str] = ("EmbedderSecretNotMarked", "EmbedderHostNotAllowed"),
    what: str = "the embedder's endpoint",
) -> SpecProblem | None:
    """Why the operator may not send this Secret's key to ``endpoint`` (None: it may).

    ``label`` is the mark the Secret's owner sets for this use (embedder keys by default;
    external models' keys use :data:`shoal.api.v1alpha1.external.MODEL_KEY_LABEL`),
    ``reasons`` the problems' words (not marked, host not allowed), ``what`` names the
    endpoint in the message."""
    meta = secret.get("metadata") or {}
    name, ns = meta.get("name"), meta.get("namespace")
    if (meta.get("labels") or {}).get(label) != "true":
        return SpecProblem(
            reasons[0],
            f"Secret {name!r} in {ns} is not marked for Shoal: its owner must label it "
            f"{label}=true and name the host of {what} in the annotation "
            f"{ALLOWED_HOSTS_ANNOTATION}",
        )
    host = (urlsplit(endpoint).hostname or "").lower()
    hosts = allowed_hosts(secret)
    if host not in hosts:
        listed = ", ".join(hosts) if hosts else "no host"
        return SpecProblem(
            reasons[1],
            f"Secret {name!r} in {ns} allows its key to be sent to {listed}, not to {host!r} "
            f"({what}); its owner may add the host to the annotation "
            f"{ALLOWED_HOSTS_ANNOTATION}",
        )
    return None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def fetch_calibration(
    uri: str,
    *,
    max_bytes: int | None = None,
    timeout: float | None = None,
) -> bytes:
    """The bytes at ``uri``; :class:`SourceRefused` past the limits or on any HTTP error.

    Limits default to :data:`MAX_CALIBRATION_BYTES` and :data:`CALIBRATION_TIMEOUT_SECONDS`.
    """
    max_bytes = MAX_CALIBRATION_BYTES if max_bytes is None else max_bytes
    timeout = CALIBRATION_TIMEOUT_SECONDS if timeout is None else timeout
    deadline = time.monotonic() + timeout
    url = httpx.URL(uri)
    origin = _origin(url)

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise httpx.TimeoutException("deadline passed")
        return remaining

    try:
        with httpx.Client(follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream("GET", url, timeout=left()) as resp:
                    if resp.is_redirect:
                        target = url.join(resp.headers.get("location", ""))
                        if _origin(target) != origin:
                            raise SourceRefused(
                                SpecProblem(
                                    "CalibrationRedirectRefused",
                                    f"{uri} redirects to another host ({target.scheme}://"
                                    f"{target.netloc.decode()}); the operator follows "
                                    "redirects only within the same scheme, host and port",
                                )
                            )
                        url = target
                        continue
                    resp.raise_for_status()
                    return _read_capped(resp, uri, max_bytes, left)
    except httpx.TimeoutException as exc:
        raise SourceRefused(
            SpecProblem(
                "CalibrationTimeout", f"reading {uri} took longer than {timeout:g} s; giving up"
            )
        ) from exc
    except httpx.HTTPError as exc:
        raise SourceRefused(
            SpecProblem("CalibrationNotFound", f"cannot read {uri}: {exc}")
        ) from exc
    raise SourceRefused(
        SpecProblem(
            "CalibrationRedirectRefused", f"{uri} redirects more than {MAX_REDIRECTS} times"
        )
    )


def _too_large(uri: str, max_bytes: int) -> SourceRefused:
    return SourceRefused(
        SpecProblem(
            "CalibrationTooLarge",
            f"{uri} is larger than the {max_bytes} bytes the operator reads; use a smaller "
            "calibration file",
        )
    )


def _read_capped(resp: httpx.Response, uri: str, max_bytes: int, left: Any) -> bytes:
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(uri, max_bytes)
    out = bytearray()
    for chunk in resp.iter_bytes():
        out += chunk
        if len(out) > max_bytes:
            raise _too_large(uri, max_bytes)
        left()
    return bytes(out)
