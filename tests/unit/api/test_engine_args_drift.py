"""The committed list of vLLM's engine arguments is the installed vLLM's.

``shoal.api.v1alpha1.vllm_engine_args`` is generated from
``vllm.engine.arg_utils.AsyncEngineArgs`` by ``shoal engine-args``; when vLLM is bumped (or
the list edited by hand), this test fails until it is regenerated.
"""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from shoal.cli import app
from shoal.devtools.testing import require

pytestmark = pytest.mark.slow  # imports vLLM (and torch)


def test_engine_args_list_matches_the_installed_vllm() -> None:
    require(
        importlib.util.find_spec("vllm") is not None,
        "vLLM not installed: hack/setup.sh --vllm",
    )
    res = CliRunner().invoke(app, ["engine-args", "--check"])
    assert res.exit_code == 0, res.output
    from shoal.api.v1alpha1.vllm_engine_args import ENGINE_ARGS, VLLM_VERSION
    from shoal.devtools.engine_args import installed

    version, names = installed()
    assert (VLLM_VERSION, sorted(ENGINE_ARGS)) == (version, names)
