"""Every file of the chart that is generated from code, written or checked in one go.

Called by ``shoal chart`` (write) and ``shoal chart --check`` (drift check, as CI and the
tests run it): ``values.schema.json`` from the values model, the Grafana dashboard, and the
CRD templates (which ``shoal crds`` also writes).
"""

from __future__ import annotations

from pathlib import Path

from shoal.devtools.chart import crds, dashboard, schema


def write_all(chart_dir: Path) -> list[Path]:
    """Write every generated file into ``chart_dir``; returns the paths written."""
    return [
        schema.write_schema(chart_dir),
        dashboard.write_dashboard(chart_dir),
        *crds.write_chart_crds(chart_dir),
    ]


def stale(chart_dir: Path) -> list[str]:
    """Generated files of ``chart_dir`` that are missing or out of date (paths in the chart)."""
    out = []
    if not schema.schema_is_current(chart_dir):
        out.append(schema.SCHEMA_FILE)
    if not dashboard.dashboard_is_current(chart_dir):
        out.append(str(dashboard.DASHBOARD_FILE))
    out += [str(crds.TEMPLATES_SUBDIR / name) for name in crds.stale_chart_crds(chart_dir)]
    return out
