"""Shoal's Helm chart as code: the values model and the files generated from it.

The chart itself (``charts/shoal``) is hand-written YAML and templates. What can drift is
generated from here and checked by ``shoal chart --check`` and the tests:

- :mod:`shoal.devtools.chart.values`: a Pydantic model of ``values.yaml``; ``values.schema.json``
  (which Helm checks every install and upgrade against) is generated from it
  (:mod:`shoal.devtools.chart.schema`).
- :mod:`shoal.devtools.chart.crds`: the chart's templated copies of the ``shoal.dev`` CRDs (behind
  ``crds.install``, kept on uninstall by ``crds.keep``), from the same models as ``crds/``.
- :mod:`shoal.devtools.chart.dashboard`: the Grafana dashboard the chart ships in a ConfigMap.

A leaf module: it imports :mod:`shoal.api` and nothing else of Shoal's, so ``shoal crds`` and
``shoal chart`` stay fast and the chart never depends on the operator's or serving's code.
"""

from __future__ import annotations

from pathlib import Path

#: Where the chart lives, relative to the repository root.
CHART_DIR = Path("charts") / "shoal"

__all__ = ["CHART_DIR"]
