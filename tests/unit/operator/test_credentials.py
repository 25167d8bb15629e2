"""The operator's credentials: KUBECONFIG is read when connecting, and kopf gets the same
server, CA and token as the operator's own client."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shoal.operator import credentials


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    ca = path.parent / "ca.crt"
    ca.write_text("not read until a connection is made\n")
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))  # fmt: skip
    return path


@pytest.fixture(autouse=True)
def outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_kubeconfig_set_after_import_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kubernetes.config  # noqa: F401  (imported first, as in a long-lived process)

    first = write_kubeconfig(tmp_path / "one", "https://one.example:6443", "t-one")
    second = write_kubeconfig(tmp_path / "two", "https://two.example:6443", "t-two")
    monkeypatch.setenv("KUBECONFIG", str(first))
    assert credentials.api_client().configuration.host == "https://one.example:6443"
    monkeypatch.setenv("KUBECONFIG", str(second))
    assert credentials.api_client().configuration.host == "https://two.example:6443"


def test_kopf_gets_the_clients_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "k", "https://k:6443", "tok")))
    info = credentials.connection_info(credentials.api_client())
    assert info.server == "https://k:6443"
    assert (info.scheme, info.token) == ("Bearer", "tok")
    assert info.ca_path == str(tmp_path / "ca.crt")
    assert info.insecure is False
    assert info.certificate_path is None and info.username is None


def test_kopf_session_bounds_its_connections_and_sends_the_token() -> None:
    import asyncio

    import kopf

    async def build() -> tuple[int, str, str]:
        info = kopf.ConnectionInfo(server="https://k:6443", insecure=True, token="tok")
        ctx = credentials.kopf_session(info, limit=7)
        try:
            connector = ctx.aiohttp_session.connector
            assert connector is not None
            return connector.limit, ctx.aiohttp_session.headers["Authorization"], ctx.server
        finally:
            await ctx.aiohttp_session.close()

    limit, auth, server = asyncio.run(build())
    assert (limit, auth, server) == (7, "Bearer tok", "https://k:6443")
