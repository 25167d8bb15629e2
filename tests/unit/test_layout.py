"""The repository keeps the shape DESIGN.md describes."""

from __future__ import annotations

import subprocess
import sys

from shoal.devtools.testing import REPO_ROOT


def test_no_python_in_container_contexts() -> None:
    for folder in ("operator", "serving"):
        found = list((REPO_ROOT / folder).rglob("*.py"))
        assert found == [], f"{folder}/ is a container build context; move {found} under src/shoal"


def test_one_import_package_named_shoal() -> None:
    packages = [p.name for p in (REPO_ROOT / "src").iterdir() if (p / "__init__.py").exists()]
    assert packages == ["shoal"]
    assert not (REPO_ROOT / "operator" / "__init__.py").exists()


def test_top_level_folders_exist() -> None:
    for folder in ("operator", "serving", "crds", "charts", "hack", "tests", "bench", "examples"):
        assert (REPO_ROOT / folder).is_dir(), folder


def test_generated_crds_match_models() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "crds", "--check", "--out", str(REPO_ROOT / "crds")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_import_layers() -> None:
    """Entry points -> planning/routing/autoscaling -> api; never upwards (import-linter)."""
    lint = REPO_ROOT / ".venv" / "bin" / "lint-imports"
    exe = str(lint) if lint.exists() else "lint-imports"
    result = subprocess.run([exe], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _import_graph():  # type: ignore[no-untyped-def]
    import grimp

    return grimp.build_graph("shoal")


def test_no_import_cycles() -> None:
    """No module of shoal imports a module that imports it back, directly or through others."""
    graph = _import_graph()
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if not imported.startswith("shoal") or imported == module:
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_planning_never_imports_serving() -> None:
    graph = _import_graph()
    for source in ("shoal.planning", "shoal.contract", "shoal.operator"):
        chain = graph.find_shortest_chains(importer=source, imported="shoal.serving")
        assert not chain, f"{source} reaches shoal.serving: {chain}"


def test_devtools_stay_out_of_the_images() -> None:
    for image in ("operator", "serving"):
        ignore = (REPO_ROOT / image / "Dockerfile.dockerignore").read_text().splitlines()
        assert "src/shoal/devtools/" in ignore, f"{image} image would ship shoal.devtools"
        assert ignore.index("src/shoal/devtools/") > ignore.index("!src/")


def test_generated_yaml_has_no_anchors() -> None:
    """CRDs are plain YAML, as every CRD generator writes them: no ``&id001`` / ``*id001``."""
    files = [*(REPO_ROOT / "crds").glob("*.yaml")]
    files += (REPO_ROOT / "charts" / "shoal" / "templates" / "crds").glob("*.yaml")
    for path in files:
        text = path.read_text()
        assert "&id0" not in text and "*id0" not in text, f"{path.name} has YAML aliases"


def test_test_modules_outside_packages_have_unique_names() -> None:
    """pytest imports a test module of a folder without ``__init__.py`` by its file name
    alone, so two such modules of one name break the collection of the whole suite (running
    one folder at a time does not show it)."""
    seen: dict[str, list[str]] = {}
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        if not (path.parent / "__init__.py").exists():
            seen.setdefault(path.name, []).append(str(path.relative_to(REPO_ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
