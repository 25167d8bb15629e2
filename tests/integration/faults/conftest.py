"""Fault tests share the operator tests' helpers; the operator runs here as its own process
(``python -m shoal.operator``), as in production, so that it can be SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shoal.devtools.testing.controlplane import ControlPlane
from tests.integration.operator.conftest import cluster  # noqa: F401  (a fixture)


class OperatorProcess:
    """``python -m shoal.operator`` watching one namespace; killed by its own process group."""

    def __init__(self, cp: ControlPlane, namespace: str, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env.update(KUBECONFIG=str(cp.kubeconfig), SHOAL_RESYNC_SECONDS="3",
                   SHOAL_RETRY_SECONDS="2")  # fmt: skip
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.operator", "-n", namespace, "--metrics-port", "0"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: no handler finishes, no state is saved on the way out."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def operator_process(cp: ControlPlane, namespace: str, log: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cp, namespace, log)
    try:
        yield op
    finally:
        op.kill()
