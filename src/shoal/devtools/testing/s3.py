"""A local S3-compatible object store for tests and benchmarks: moto's server, in-process.

Ray Serve LLM loads LoRA adapters from object stores only, so the tests and the benchmark of
adapters through the fleet (tests/integration/serving/test_vllm_lora.py,
``bench/bench_lora.py``) start :func:`local_s3`: moto's S3 server on a loopback port, with
credentials made up per run (an AWS shared-credentials file written beside it), and upload
the generated adapter with :func:`upload_folder`. The fleet then names the store as a cluster
would name MinIO or Ceph (``loraStore.endpoint``). Needs the ``dev`` extra's ``moto[server]``
(and ``boto3``).
"""

from __future__ import annotations

import importlib
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.devtools.testing.controlplane import free_port as _free_port


@dataclass(frozen=True)
class LocalS3:
    """A running store: where it is and the credentials it was given."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        """A boto3 S3 client for the store (untyped: boto3 ships no stubs)."""
        boto3 = importlib.import_module("boto3")
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def credentials_file(self, path: Path) -> Path:
        """Write the store's credentials as an AWS shared-credentials file (the format a
        fleet's ``loraStore.credentialsSecretRef`` holds) at ``path``, readable by the owner
        only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "[default]\n"
            f"aws_access_key_id = {self.access_key_id}\n"
            f"aws_secret_access_key = {self.secret_access_key}\n"
        )
        path.chmod(0o600)
        return path


@contextmanager
def local_s3() -> Iterator[LocalS3]:
    """moto's S3 server on a free loopback port until the block ends."""
    server_module = importlib.import_module("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield LocalS3(
            endpoint=f"http://127.0.0.1:{port}",
            access_key_id="AKIA" + secrets.token_hex(8).upper(),
            secret_access_key=secrets.token_urlsafe(30),
        )
    finally:
        server.stop()


def upload_folder(store: LocalS3, folder: Path, uri: str) -> list[str]:
    """Upload the files of ``folder`` under ``uri`` (``s3://bucket/prefix``), creating the
    bucket where it is missing; the keys written."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = store.client()
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}".lstrip("/")
        client.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys
