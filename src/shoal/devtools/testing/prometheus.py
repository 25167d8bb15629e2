"""A real Prometheus (the Debian package) on loopback, scraping given targets every second.

For tests and benchmarks that need what a cluster's Prometheus would hold: the autoscaler's
windows, the refit's feedback counts. :func:`running_prometheus` starts it with a throwaway
TSDB under ``workdir`` and stops it after the ``with`` block; a machine without the binary
skips (or fails, where servers are required; :func:`shoal.devtools.testing.require`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shoal.devtools.testing import require

BINARY = "/usr/bin/prometheus"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus: its base URL."""

    url: str

    def value(self, promql: str) -> float:
        """The first sample of an instant query (0 when the result is empty)."""
        q = urllib.parse.quote(promql)
        with urllib.request.urlopen(f"{self.url}/api/v1/query?query={q}", timeout=5) as resp:
            result = json.loads(resp.read())["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0


@contextmanager
def running_prometheus(
    targets: Sequence[str], workdir: Path, labels: Mapping[str, str] | None = None
) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` (``host:port``) every second, until the block ends;
    ``labels`` are set on every series scraped (as a PodMonitor sets ``namespace``)."""
    import yaml

    binary = shutil.which("prometheus") or (BINARY if Path(BINARY).exists() else None)
    require(
        binary is not None, "Prometheus not installed (Debian package prometheus; hack/setup.sh)"
    )
    assert binary is not None
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "shoal",
                "static_configs": [{"targets": list(targets), "labels": dict(labels or {})}],
            }
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Prometheus did not start; see {workdir / 'prometheus.log'}"
                    ) from None
                time.sleep(0.2)
        yield Prometheus(url)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
