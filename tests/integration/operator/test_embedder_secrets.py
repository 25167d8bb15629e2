"""The operator uses an embedder's Secret only as its owner allows, and reads calibration
URLs under limits: each refusal is Fitted=False with its reason and a Warning event.

Against the real API server; the embeddings endpoint is the project's OpenAI-compatible test
server on loopback, which records the Authorization headers it receives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
import pytest

from shoal.devtools.testing.embeddings import serve_embeddings
from shoal.operator.config import OperatorConfig
from shoal.operator.gateway import KubeGateway
from shoal.operator.policies import reconcile_policy
from shoal.operator.sources import ALLOWED_HOSTS_ANNOTATION, SECRET_LABEL
from tests.integration.operator.conftest import (
    CALIBRATION,
    Cluster,
    calibration_configmap,
    policy,
    wait_for,
)

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)
KEY = "k-7d1c"


def _secret(marked: bool, hosts: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "embed"}
    if marked:
        meta["labels"] = {SECRET_LABEL: "true"}
    if hosts is not None:
        meta["annotations"] = {ALLOWED_HOSTS_ANNOTATION: hosts}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"token": KEY}}


def _keyed_policy(url: str) -> dict[str, Any]:
    embedder = {"type": "openai", "endpoint": url, "model": "hash",
                "apiKeySecretRef": {"name": "embed", "key": "token"}}  # fmt: skip
    return policy(embedder=embedder)


def _reconcile(cluster: Cluster) -> Any:
    gw = KubeGateway(cluster.cp.api_client())
    return reconcile_policy(gw, OperatorConfig(), cluster.get("rpol", "p"), NOW)


def _fitted(cluster: Cluster) -> dict[str, Any]:
    fitted = cluster.condition("rpol", "p", "Fitted")
    assert fitted is not None
    return fitted


def test_unmarked_secret_is_refused_with_a_warning(cluster: Cluster, operator: Any) -> None:
    """A running operator: Fitted=False names the missing mark, a Warning event says it too,
    and the key never leaves the cluster."""
    with serve_embeddings(api_key=KEY) as endpoint:
        cluster.apply(_secret(marked=False, hosts="127.0.0.1"), calibration_configmap(),
                      _keyed_policy(endpoint.url))  # fmt: skip
        with operator():
            fitted = wait_for("Fitted=False", lambda: (c := cluster.condition("rpol", "p", "Fitted"))
                              and c["status"] == "False" and c, 60)  # fmt: skip
            assert fitted["reason"] == "EmbedderSecretNotMarked", fitted
            assert SECRET_LABEL in fitted["message"]
            assert KEY not in json.dumps(cluster.get("rpol", "p"))

            def warning() -> Any:
                out = cluster.cp.kubectl("get", "events", "-n", cluster.ns, "-o", "json").stdout
                return [e for e in json.loads(out)["items"]
                        if e["reason"] == "EmbedderSecretNotMarked" and e["type"] == "Warning"]  # fmt: skip

            (event,) = wait_for("the Warning event", warning, 30)[:1]
            assert event["involvedObject"]["name"] == "p"
            assert KEY not in event["message"]
        assert endpoint.authorizations == []


def test_marked_secret_is_sent_to_its_host_only(cluster: Cluster) -> None:
    with serve_embeddings(api_key=KEY) as endpoint:
        # Marked, but for another host: refused, nothing sent.
        cluster.apply(_secret(marked=True, hosts="embed.example"), calibration_configmap(),
                      _keyed_policy(endpoint.url))  # fmt: skip
        with pytest.raises(kopf.PermanentError, match=r"not to '127\.0\.0\.1'"):
            _reconcile(cluster)
        assert _fitted(cluster)["reason"] == "EmbedderHostNotAllowed"
        assert endpoint.authorizations == []

        # Its owner allows this host: the fit uses the key, and only there.
        cluster.apply(_secret(marked=True, hosts="embed.example,127.0.0.1"))
        outcome = _reconcile(cluster)
        assert outcome.fitted
        assert _fitted(cluster)["status"] == "True"
        assert endpoint.authorizations and set(endpoint.authorizations) == {f"Bearer {KEY}"}
        assert cluster.get("rpol", "p")["status"]["artifact"]  # type: ignore[index]

        # The owner withdraws the host: the next reconcile (no refit needed) withdraws the
        # policy's artifact, so no fleet is rendered with the key for that host.
        cluster.apply(_secret(marked=True, hosts="embed.example"))
        with pytest.raises(kopf.PermanentError, match=r"not to .127\.0\.0\.1."):
            _reconcile(cluster)
        assert _fitted(cluster)["reason"] == "EmbedderHostNotAllowed"
        assert "artifact" not in (cluster.get("rpol", "p") or {})["status"]


@pytest.fixture()
def calibration_server() -> Iterator[str]:
    """Serves the calibration at /cal.jsonl, 3 MiB at /huge and a redirect off-host at /moved."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved":
                self.send_response(301)
                self.send_header("Location", "http://calibration.example/cal.jsonl")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = CALIBRATION.encode() if self.path == "/cal.jsonl" else b"x" * (3 << 20)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_calibration_url_limits_are_conditions(
    cluster: Cluster, calibration_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shoal.operator.sources.MAX_CALIBRATION_BYTES", 1 << 20)
    for path, reason in [
        ("/moved", "CalibrationRedirectRefused"),
        ("/huge", "CalibrationTooLarge"),
    ]:
        cluster.apply(policy(calibration={"uri": f"{calibration_server}{path}"}))
        with pytest.raises(kopf.TemporaryError):
            _reconcile(cluster)
        fitted = _fitted(cluster)
        assert (fitted["status"], fitted["reason"]) == ("False", reason), fitted
    cluster.apply(policy(calibration={"uri": f"{calibration_server}/cal.jsonl"}))
    assert _reconcile(cluster).fitted
    assert _fitted(cluster)["status"] == "True"
