"""The `laptop` extra (what `make up` installs) is the `routing` and `serving` extras less the
plots, with the same requirements, so the quickstart runs what the images and tests run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
#: Left out of the laptop on purpose: `shoal router eval --plot` alone needs it.
PLOTS_ONLY = {"matplotlib"}


def _by_name(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.match(r"([A-Za-z0-9_.-]+)", req)
        assert m is not None, req
        name = m.group(1).lower().replace("_", "-")
        if name != "shoal":  # the self-references (shoal[routing])
            out[name] = req
    return out


def test_laptop_is_routing_and_serving_without_plots() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    laptop = _by_name(extras["laptop"])
    wanted = _by_name(extras["routing"] + extras["serving"])
    for name in PLOTS_ONLY:
        wanted.pop(name)
    assert laptop == wanted


def test_setup_installs_the_laptop_extra_for_make_up() -> None:
    setup = (PYPROJECT.parent / "hack" / "setup.sh").read_text()
    assert 'extras="laptop"' in setup
    assert 'extras="dev,routing,serving"' in setup
