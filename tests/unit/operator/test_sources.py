"""The limits the operator reads calibration URLs under (against a real HTTP server on
loopback) and its rules for embedder Secrets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shoal.operator.sources import (
    ALLOWED_HOSTS_ANNOTATION,
    SECRET_LABEL,
    SourceRefused,
    fetch_calibration,
    secret_grant_problem,
)

BODY = b'{"prompt": "hi", "scores": {"a": 1}}\n'


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """http://127.0.0.1:PORT serving /ok, /big, /same (redirect to /ok), /other (redirect to
    the same server as `localhost`, another host), /loop (redirects to itself) and /drip (a
    byte now and then, never done)."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _redirect(self, where: str) -> None:
            self.send_response(302)
            self.send_header("Location", where)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            port = self.server.server_address[1]
            if self.path == "/ok":
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)
            elif self.path in ("/big", "/big-chunked"):
                self.send_response(200)
                if self.path == "/big":
                    self.send_header("Content-Length", str(4096))
                self.end_headers()
                self.wfile.write(b"x" * 4096)
            elif self.path == "/same":
                self._redirect("/ok")
            elif self.path == "/other":
                self._redirect(f"http://localhost:{port}/ok")
            elif self.path == "/loop":
                self._redirect("/loop")
            elif self.path == "/drip":
                self.send_response(200)
                self.end_headers()
                while not stop.wait(0.05):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
            else:
                self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        stop.set()
        srv.shutdown()
        srv.server_close()


def _refused(uri: str, **limits: Any) -> str:
    with pytest.raises(SourceRefused) as info:
        fetch_calibration(uri, **limits)
    return info.value.problem.reason


def test_reads_a_file_and_follows_a_same_host_redirect(server: str) -> None:
    assert fetch_calibration(f"{server}/ok") == BODY
    assert fetch_calibration(f"{server}/same") == BODY


def test_redirect_to_another_host_is_refused(server: str) -> None:
    with pytest.raises(SourceRefused, match="redirects to another host") as info:
        fetch_calibration(f"{server}/other")
    assert info.value.problem.reason == "CalibrationRedirectRefused"


def test_endless_redirects_are_refused(server: str) -> None:
    assert _refused(f"{server}/loop") == "CalibrationRedirectRefused"


def test_size_cap_by_declared_length_and_by_bytes_read(server: str) -> None:
    assert _refused(f"{server}/big", max_bytes=1024) == "CalibrationTooLarge"
    assert _refused(f"{server}/big-chunked", max_bytes=1024) == "CalibrationTooLarge"
    assert len(fetch_calibration(f"{server}/big", max_bytes=4096)) == 4096


def test_a_transfer_that_never_ends_times_out(server: str) -> None:
    with pytest.raises(SourceRefused, match="took longer than 1 s") as info:
        fetch_calibration(f"{server}/drip", timeout=1.0)
    assert info.value.problem.reason == "CalibrationTimeout"


def test_missing_file_is_not_found(server: str) -> None:
    assert _refused(f"{server}/nothing") == "CalibrationNotFound"


def _secret(labels: dict[str, str] | None = None, hosts: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "embed", "namespace": "ns", "labels": labels or {}}
    if hosts is not None:
        meta["annotations"] = {ALLOWED_HOSTS_ANNOTATION: hosts}
    return {"metadata": meta, "data": {"token": "czNjcmV0"}}


def test_unmarked_secret_is_refused() -> None:
    problem = secret_grant_problem(_secret(hosts="embed.example"), "https://embed.example/v1")
    assert problem is not None and problem.reason == "EmbedderSecretNotMarked"
    assert SECRET_LABEL in problem.message


def test_marked_secret_goes_only_to_the_hosts_it_names() -> None:
    secret = _secret({SECRET_LABEL: "true"}, hosts="embed.example, Other.Example")
    assert secret_grant_problem(secret, "https://embed.example/v1") is None
    assert secret_grant_problem(secret, "http://other.example:8080/v1") is None
    problem = secret_grant_problem(secret, "https://evil.example/v1")
    assert problem is not None and problem.reason == "EmbedderHostNotAllowed"
    assert "'evil.example'" in problem.message
    assert "czNjcmV0" not in problem.message and "s3cret" not in problem.message


def test_marked_secret_without_hosts_goes_nowhere() -> None:
    problem = secret_grant_problem(_secret({SECRET_LABEL: "true"}), "https://embed.example/v1")
    assert problem is not None and problem.reason == "EmbedderHostNotAllowed"
    assert "no host" in problem.message
