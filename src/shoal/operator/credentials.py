"""Where the operator's Kubernetes credentials come from, for its own client and for kopf.

One source for both: in a pod, the ServiceAccount; elsewhere, the kubeconfig named by
``KUBECONFIG`` *when the operator connects* (the kubernetes client fixes its default path
when it is first imported, which would ignore a ``KUBECONFIG`` set after that, by a test
harness or a program that embeds the operator), else ``~/.kube/config``. The kubernetes
client does the reading, so exec plugins and auth providers work as they do for kubectl.

kopf gets an HTTP session of ours (:func:`kopf_session`) rather than one it builds itself:
kopf's own has no limit on connections, and when a thousand fleets arrive at once it opens
one TLS connection per request in flight (about 1,500), each with a 128 KiB read buffer:
180 MB of the operator's memory, never given back to the system once freed.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import kopf

#: Connections kopf's session keeps to the API server at most: its watch streams (one a
#: kind), plus its patches of finalizers and annotations and its event posts, which queue
#: for a free connection instead of opening more (each costs 128 KiB of TLS buffer).
KOPF_CONNECTIONS = 64


def api_client(pool_size: int | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` with the operator's credentials; ``pool_size``: how
    many connections it keeps open (as many as threads use it at once, else each extra
    request opens and closes a TLS connection of its own)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        kubeconfig = os.environ.get("KUBECONFIG") or None
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    if pool_size:
        cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg)


def connection_info(api: Any, *, trust_env: bool = False) -> kopf.ConnectionInfo:
    """kopf's view of an ``ApiClient``'s credentials (server, CA, bearer token or client cert)."""
    cfg = api.configuration
    # Auth providers and exec plugins refresh the token through this call; newer clients keep
    # it under "BearerToken", older ones under "authorization".
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        trust_env=trust_env,
    )


def kopf_session(info: kopf.ConnectionInfo, limit: int = KOPF_CONNECTIONS) -> kopf.AiohttpSession:
    """kopf's HTTP session for ``info``'s credentials (as kopf builds its own: the same TLS
    context and authorization header), with at most ``limit`` connections. Called from an
    async login handler (aiohttp binds a session to the running event loop); kopf closes it
    when it logs in again or stops."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        aiohttp_session=session,
    )
