"""``shoal render`` through typer's runner: the objects, in order, as YAML; pod templates as
Pods; a clear error where a policy's calibration is not in the files."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from shoal.cli import app

runner = CliRunner()
FILE = """
apiVersion: shoal.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: p}
spec: {strategy: static, staticOrder: [a]}
---
apiVersion: shoal.dev/v1alpha1
kind: ModelFleet
metadata: {name: f}
spec:
  routingPolicyRef: {name: p}
  tiers: [{name: t, costPerReplicaHour: "0.10"}]
  models: [{name: a, engine: simulated, tier: t}]
"""


def test_render_prints_the_children_and_pods(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FILE)
    res = runner.invoke(app, ["render", "-f", str(path), "-n", "team", "--pod-templates"])
    assert res.exit_code == 0, res.output
    docs = list(yaml.safe_load_all(res.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("NetworkPolicy", "f"), ("PodDisruptionBudget", "f-workers"), ("RayService", "f"),
        ("Service", "f"), ("Pod", "f-head"), ("Pod", "f-cpu"),
    ]  # fmt: skip
    assert {d["metadata"]["namespace"] for d in docs} == {"team"}
    head = docs[4]["spec"]
    assert head["securityContext"]["runAsNonRoot"] is True


def test_missing_calibration_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FILE.replace("{strategy: static, staticOrder: [a]}",
                                 "{calibration: {configMapRef: {name: cal, key: k}}}"))  # fmt: skip
    res = runner.invoke(app, ["render", "-f", str(path)])
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert "ConfigMap cal (the policy's calibration) is not in the file" in out
    assert "another -f" in out
