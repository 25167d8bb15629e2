"""Whether a live object covers what the operator would apply (no write needed)."""

from __future__ import annotations

import copy
from typing import Any

from tests.unit.planning.test_children import ART, fleet, policy

from shoal.planning.children import PlanSettings, desired_children
from shoal.planning.drift import covers, needs_apply


def _live(desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` as an API server returns it: metadata, defaults and status added."""
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="u", resourceVersion="7", managedFields=[{"manager": "x"}])
    live["status"] = {"serviceStatus": "Running"}
    return live


def test_extra_fields_in_live_are_fine() -> None:
    assert covers({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}})
    assert covers([{"name": "x", "protocol": "TCP"}], [{"name": "x"}])


def test_changed_missing_or_retyped_values_are_drift() -> None:
    assert not covers({"a": 1}, {"a": 2})
    assert not covers({}, {"a": 1})
    assert not covers({"a": [1, 2, 3]}, {"a": [1, 2]})  # an owned list is owned whole
    assert not covers({"a": "1"}, {"a": 1})
    assert not covers({"a": 1}, {"a": True})
    assert covers({"a": 1.0}, {"a": 1})  # JSON does not tell them apart


def test_every_child_as_returned_needs_no_apply() -> None:
    for obj in desired_children(fleet(), policy(), ART, PlanSettings()).objects():
        assert not needs_apply(_live(obj), obj), obj["kind"]


def test_a_changed_or_missing_or_deleted_child_needs_apply() -> None:
    rs = desired_children(fleet(), policy(), ART, PlanSettings()).rayservice
    assert needs_apply(None, rs)
    edited = _live(rs)
    edited["spec"]["serveConfigV2"] += "\n# edited"
    assert needs_apply(edited, rs)
    going = _live(rs)
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert needs_apply(going, rs)
    relabelled = _live(rs)
    relabelled["metadata"]["labels"] = {}
    assert needs_apply(relabelled, rs)
