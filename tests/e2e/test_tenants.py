"""A fleet in ``access.mode: Tenants`` on the real node: the fleet and teams of
``examples/tenants.yaml`` (without its Gateway: no Gateway controller runs here; with Ray pods
sized for a 2-CPU node; team-search's request limit lowered so that a test reaches it), keys
in labelled Secrets, spoken to with the official ``openai`` client through the Service.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from shoal.devtools.testing import REPO_ROOT
from shoal.devtools.testing.node import NodeCluster, wait_until
from tests.e2e.conftest import FLEET_NAMESPACE
from tests.e2e.test_quickstart import _condition

EXAMPLE = REPO_ROOT / "examples" / "tenants.yaml"
NS = FLEET_NAMESPACE
#: team-search's requests per minute here: low, so that the test reaches it.
LIMIT = 3


def _docs() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    for d in docs:
        if d["kind"] == "ModelFleet":
            d["spec"]["serving"].pop("gateway", None)
            d["spec"]["serving"]["head"] = {"resources": {"cpu": "500m", "memory": "2Gi"}}
            d["spec"]["serving"]["cpuWorker"] = {"resources": {"cpu": "1100m", "memory": "3Gi"}}
        if d["kind"] == "Tenant" and d["metadata"]["name"] == "team-search":
            d["spec"]["limits"]["requestsPerMinute"] = LIMIT
    return docs


DOCS = _docs()
FLEET = next(d["metadata"]["name"] for d in DOCS if d["kind"] == "ModelFleet")
TENANTS = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "Tenant"}


def _secret(name: str, key: str) -> str:
    value = base64.b64encode(key.encode()).decode()
    return json.dumps({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "labels": {"shoal.dev/api-key": "true"}},
        "data": {"key": value},
    })  # fmt: skip


def _client(cluster: NodeCluster, key: str) -> openai.OpenAI:
    base = cluster.service_url(FLEET, NS)
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def _status(cluster: NodeCluster, key: str) -> int:
    try:
        _client(cluster, key).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


@pytest.fixture(scope="module")
def keys(cluster: NodeCluster) -> Iterator[dict[str, str]]:
    """The example applied with a key Secret per team; the fleet and its tenants Ready."""
    made = {}
    for tenant in TENANTS.values():
        ref = tenant["spec"]["apiKeys"][0]["secretRef"]
        made[tenant["metadata"]["name"]] = key = secrets.token_urlsafe(32)
        cluster.kubectl("apply", "-f", "-", input=_secret(ref["name"], key))
    cluster.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump_all(copy.deepcopy(DOCS)))

    def ready(kind: str, name: str) -> bool:
        c = _condition(cluster.get(kind, name, NS), "Ready")
        return bool(c and c["status"] == "True")

    wait_until("the tenants' fleet Ready", lambda: ready("modelfleet", FLEET), 900, 2)
    for name in TENANTS:
        wait_until(f"tenant {name} Ready", lambda n=name: ready("tenant", n), 120, 1)
    wait_until(
        "the fleet answering a tenant",
        lambda: _status(cluster, made["team-batch"]) == 200,
        300,
        1,
    )
    yield made
    cluster.kubectl("delete", "-n", NS, "-f", "-", "--ignore-not-found", "--wait=false",
                    input=yaml.safe_dump_all(DOCS), check=False)  # fmt: skip


def test_no_key_is_refused(cluster: NodeCluster, keys: dict[str, str]) -> None:
    # No Authorization header at all (the openai client refuses to send without a key).
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(
        f"{cluster.service_url(FLEET, NS)}/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 401
    assert _status(cluster, secrets.token_urlsafe(32)) == 401


def test_a_labelled_secrets_key_is_served(cluster: NodeCluster, keys: dict[str, str]) -> None:
    raw = _client(cluster, keys["team-batch"]).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content


def test_over_the_request_limit(cluster: NodeCluster, keys: dict[str, str]) -> None:
    codes = [_status(cluster, keys["team-search"]) for _ in range(LIMIT + 2)]
    assert codes[0] == 200, codes
    assert 429 in codes, codes


def test_a_rotated_secret_is_honoured(cluster: NodeCluster, keys: dict[str, str]) -> None:
    tenant = TENANTS["team-batch"]
    ref = tenant["spec"]["apiKeys"][0]["secretRef"]
    old, new = keys["team-batch"], secrets.token_urlsafe(32)
    t0 = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=_secret(ref["name"], new))
    wait_until("the new key served", lambda: _status(cluster, new) == 200, 120, 1)
    wait_until("the old key refused", lambda: _status(cluster, old) == 401, 60, 1)
    print(f"\n[e2e] a rotated key served after {time.monotonic() - t0:.0f} s")
    keys["team-batch"] = new
