"""``shoal calibrate`` against a real fleet: the tiny llama.cpp specialists on
Ray Serve, a regex grader, then a router fitted on what it wrote.

Each tiny model answers one fixed sentence naming its specialty, so a regex on that sentence
grades a prompt of each kind right only for its specialist: the calibration file must score
every model as expected, and the router fitted on it must send each kind of held-out query to
its specialist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.contract import BuildArgs
from shoal.devtools.testing import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The tiny specialists (deterministic text; the quickstart serves a real model instead).
QUICKSTART = REPO_ROOT / "tests" / "integration" / "tiny_specialists.yaml"
PATTERN = {"math": "^Math specialist", "code": "^Code specialist", "chat": "^Chat specialist"}
HELD_OUT = {
    "math": ["What is 12 squared?", "Solve 2x - 5 = 11 for x.", "What is 30% of 90?"],
    "code": [
        "How do I parse command line arguments in Python?",
        "Write a regex that matches an email address.",
        "What is a null pointer exception in Java?",
    ],
    "chat": [
        "What is a nice gift for my mother?",
        "Tell me a joke about dogs.",
        "What book should I read on holiday?",
    ],
}


@pytest.fixture(scope="module")
def fleet(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ray import serve

    from shoal.local.manifests import fit_local_router, load_fleet_file
    from shoal.serving.app import build_app

    manifests = load_fleet_file(QUICKSTART)
    folder: Path = tmp_path_factory.mktemp("calibrate-fleet")
    artifact = fit_local_router(manifests)
    assert artifact is not None
    (folder / "router.bin").write_bytes(artifact)
    args = BuildArgs(
        fleet_name="calibrate",
        fleet=manifests.fleet.spec,
        policy=manifests.policy.spec,
        router_artifact_path=str(folder / "router.bin"),
        model_paths={m.name: str(folder / f"{m.name}.gguf") for m in manifests.fleet.spec.models},
        limits={"max_body_bytes": 65536, "max_tokens": 256},
    )
    serve.run(build_app(args), name="calibrate", route_prefix="/")
    yield local_ray
    serve.delete("calibrate")


def labelled_prompts(path: Path) -> list[dict[str, str]]:
    """The tiny fleet's calibration prompts, each with a regex on its specialist's sentence."""
    from shoal.local.manifests import load_fleet_file
    from shoal.routing import parse_calibration

    found = load_fleet_file(QUICKSTART).calibration_data()
    assert found is not None
    rows = [
        {"prompt": s.prompt, "task": s.task, "grader": "regex", "reference": PATTERN[s.task]}
        for s in parse_calibration(found[1].encode(), source=found[0], fmt="jsonl")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_calibrate_then_fit_routes_each_kind_to_its_specialist(fleet: Any, tmp_path: Path) -> None:
    from shoal.local.manifests import load_fleet_file
    from shoal.routing import fit_policy_router, load_calibration, load_router

    rows = labelled_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "calibration.jsonl"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal.cli",
            "calibrate",
            "--endpoint",
            f"{fleet.base_url}/v1",
            "--fleet",
            str(QUICKSTART),
            "--prompts",
            str(tmp_path / "prompts.jsonl"),
            "--out",
            str(out),
            "--concurrency",
            "4",
            "--max-tokens",
            "64",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert last == {
        "prompts": len(rows),
        "incomplete": 0,
        "failed_calls": 0,
        "models": ["math", "code", "chat"],
        "out": str(out),
    }
    assert "calibration by model and task" in run.stderr

    samples = load_calibration([out])
    assert len(samples) == len(rows)
    for s in samples:
        assert s.scores == {m: float(m == s.task) for m in ("math", "code", "chat")}, s
        assert set(s.costs) == {"math", "code", "chat"} and all(c > 0 for c in s.costs.values())

    policy = load_fleet_file(QUICKSTART).policy.spec
    router = load_router(fit_policy_router(policy, samples))
    chosen = {
        kind: [router.rank(p).models[0] for p in prompts] for kind, prompts in HELD_OUT.items()
    }
    majority = {kind: max(set(ms), key=ms.count) for kind, ms in chosen.items()}
    assert majority == {"math": "math", "code": "code", "chat": "chat"}, chosen

    # Run again: everything was answered, so nothing is called and the file is the same.
    before = out.read_text()
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal.cli",
            "calibrate",
            "-e",
            f"{fleet.base_url}/v1",
            "-f",
            str(QUICKSTART),
            "-p",
            str(tmp_path / "prompts.jsonl"),
            "-o",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert out.read_text() == before
