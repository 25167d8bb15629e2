"""hack/setup.sh runs as root on developers' machines: it never ends processes by name (a
Prometheus of the user's own would go too), and it checks clean with shellcheck."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from shoal.devtools.testing import require

SETUP = Path(__file__).resolve().parents[2] / "hack" / "setup.sh"


def test_setup_kills_nothing_by_name() -> None:
    code = "\n".join(line.split("#", 1)[0] for line in SETUP.read_text().splitlines())
    assert not re.search(r"\b(pkill|killall)\b", code), "setup.sh must not end processes by name"
    assert "policy-rc.d" in code  # the package's service never starts in the first place


def test_setup_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    require(shellcheck is not None, "shellcheck not installed (Debian package; hack/setup.sh)")
    assert shellcheck is not None
    out = subprocess.run([shellcheck, str(SETUP)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
