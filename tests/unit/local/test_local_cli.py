"""What `shoal up` tells a newcomer to type to stop the fleet works in their shell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shoal.local.cli import down_command


def test_under_make_it_is_make_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAKELEVEL", "1")
    assert down_command() == "make down"


def test_shoal_on_path_is_shoal_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    exe = tmp_path / "shoal"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.delenv("MAKELEVEL", raising=False)
    monkeypatch.setattr(sys, "argv", [str(exe)])
    monkeypatch.setenv("PATH", str(tmp_path))
    assert down_command() == "shoal down"


def test_shoal_not_on_path_is_its_own_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    exe = venv_bin / "shoal"
    exe.write_text("#!/bin/sh\n")
    monkeypatch.delenv("MAKELEVEL", raising=False)
    monkeypatch.setattr(sys, "argv", [str(exe)])
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(tmp_path)
    assert down_command() == ".venv/bin/shoal down"


def test_run_as_a_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAKELEVEL", raising=False)
    monkeypatch.setattr(sys, "argv", ["/somewhere/shoal/cli.py"])
    assert down_command() == f"{sys.executable} -m shoal.cli down"
