"""Generate the chart's ``values.schema.json`` from :class:`shoal.devtools.chart.values.Values`.

Helm validates the merged values against this file on every ``install``, ``upgrade``,
``template`` and ``lint``, and prints each violation with its path. The schema is the
model's JSON Schema with references inlined (so every node reads on its own), titles dropped
and the cross-field rules as ``if``/``then``. Pure functions; ``shoal chart`` (in
:mod:`shoal.cli`) writes and checks the file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from shoal.devtools.chart.values import Values

SCHEMA_FILE = "values.schema.json"
_DRAFT = "http://json-schema.org/draft-07/schema#"


def values_schema() -> dict[str, Any]:
    """The JSON Schema of the chart's values."""
    raw = Values.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _inline(raw, defs)
    # Helm hands a parent chart's `global` values to every subchart: allow them.
    schema["properties"]["global"] = {
        "type": "object",
        "description": "Values a parent chart shares with all its subcharts (unused here).",
    }
    return {"$schema": _DRAFT, "title": "Values of the shoal Helm chart", **schema}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        target.update(node)  # the field's own description and default win over the model's
        node = target
    node.pop("title", None)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: _inline(v, defs) for k, v in value.items()}
        elif key in ("default", "const", "enum", "examples"):
            out[key] = value  # data, not schema
        else:
            out[key] = _inline(value, defs)
    return out


def render() -> str:
    """The text of ``values.schema.json``, stable byte for byte."""
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(chart_dir: Path) -> Path:
    """Write ``values.schema.json`` into ``chart_dir``; returns its path."""
    path = chart_dir / SCHEMA_FILE
    path.write_text(render())
    return path


def schema_is_current(chart_dir: Path) -> bool:
    """Whether ``chart_dir``'s ``values.schema.json`` matches the model."""
    path = chart_dir / SCHEMA_FILE
    return path.exists() and path.read_text() == render()
