"""The deploy assets around the chart that cannot run here (no Docker): the kind bring-up
scripts and the operator's Dockerfile are checked statically, and against the chart."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
from tests.unit.chart.helm import CHART, run_helm

from shoal.devtools.chart.values import Values
from shoal.devtools.testing import REPO_ROOT, require

SCRIPTS = [
    REPO_ROOT / "hack" / "kind-up.sh",
    REPO_ROOT / "hack" / "kind-down.sh",
    REPO_ROOT / "hack" / "cluster-up.sh",
    REPO_ROOT / "hack" / "cluster-down.sh",
    REPO_ROOT / "hack" / "lib" / "shoal-chart.sh",
    REPO_ROOT / "hack" / "lib" / "node-env.sh",
]
#: The chart install step kind-up.sh and cluster-up.sh share.
CHART_INSTALL = REPO_ROOT / "hack" / "lib" / "shoal-chart.sh"
DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script: object) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    require(shellcheck is not None, "shellcheck not installed (Debian package; hack/setup.sh)")
    result = subprocess.run([str(shellcheck), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_kind_up_says_how_to_use_it() -> None:
    script = str(SCRIPTS[0])
    out = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: hack/kind-up.sh" in out.stdout
    assert "set -euo" not in out.stdout  # the header only
    bad = subprocess.run([script, "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument: --bogus" in bad.stderr


def test_kind_up_uses_what_exists() -> None:
    text = SCRIPTS[0].read_text()
    assert "charts/shoal" in text and (CHART / "Chart.yaml").exists()
    assert (
        REPO_ROOT / "examples" / "quickstart.yaml"
    ).exists() and "examples/quickstart.yaml" in text
    for dockerfile in ("operator/Dockerfile", "serving/Dockerfile"):
        assert f"-f {dockerfile}" in text and (REPO_ROOT / dockerfile).exists()
    # The KubeRay it installs is the one whose RayService CRD the tests use.
    pinned = re.search(
        r"KUBERAY_VERSION:-v?([0-9.]+)", (REPO_ROOT / "hack/build-control-plane.sh").read_text()
    )
    used = re.search(r"KUBERAY_VERSION:-v?([0-9.]+)", text)
    assert pinned and used and pinned.group(1) == used.group(1)


def test_kind_up_chart_values_are_valid() -> None:
    """The --set values kind-up.sh passes the chart render (the schema checks each key)."""
    text = (SCRIPTS[0].read_text() + CHART_INSTALL.read_text()).replace("\\\n", " ")
    assert "shoal_chart_install" in SCRIPTS[0].read_text()
    sets = re.findall(r"--set ([\w.]+)=(\S+)", text)
    assert {k for k, _ in sets} >= {
        "image.repository",
        "image.tag",
        "image.pullPolicy",
        "serving.image",
    }
    args = []
    for key, value in sets:
        value = value.replace('"$tag"', "dev").replace('"$serving_image"', "shoal-serving:dev")
        value = value.replace('"$repository"', "shoal-operator")
        args += ["--set", f"{key}={shlex.split(value)[0]}"]
    run_helm("template", "shoal", str(CHART), *args)


def test_operator_dockerfile_fits_the_chart() -> None:
    text = DOCKERFILE.read_text()
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user, "a numeric USER, so that runAsNonRoot can verify it"
    security = Values().pod_security
    assert (int(user.group(1)), int(user.group(2))) == (security.run_as_user, security.run_as_group)
    assert 'ENTRYPOINT ["python", "-m", "shoal.operator"]' in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text and "compileall" in text  # read-only root fs
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (REPO_ROOT / path).exists(), path
    ignore = (REPO_ROOT / "operator" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[1:2] == ["*"] or "*" in ignore
    for needed in ("!src/", "!pyproject.toml", "!hack/requirements-nodeps.txt"):
        assert needed in ignore


def test_cluster_up_says_how_to_use_it_and_its_chart_values_are_valid() -> None:
    script = REPO_ROOT / "hack" / "cluster-up.sh"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: hack/cluster-up.sh" in out.stdout
    bad = subprocess.run([str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument: --bogus" in bad.stderr
    text = script.read_text().replace("\\\n", " ")
    assert "shoal_chart_install" in text and "hack/build-images.sh" in text
    extra = re.findall(r"(--set(?:-string)?) ([\w.]+)=(\S+)", text)
    assert {k for _, k, _ in extra} >= {"serving.kuberayNamespace", "rbac.tenantSecrets"}
    assert ("--set-string", "serving.rayServeEnv.RAY_USAGE_STATS_ENABLED", "0") in extra
    args = [a for flag, k, v in extra for a in (flag, f"{k}={v}")]
    run_helm("template", "shoal", str(CHART), *args)


def test_operator_pod_gets_no_service_link_variables() -> None:
    """Kubernetes' Docker-link variables would set SHOAL_METRICS_PORT=tcp://<ip>:<port> (from
    the Service <release>-shoal-metrics), which the operator reads as its metrics port: the
    operator Pod crash-looped on the first real node."""
    import yaml

    text = run_helm("template", "shoal", str(CHART)).stdout
    deploy = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    assert deploy["spec"]["template"]["spec"]["enableServiceLinks"] is False
