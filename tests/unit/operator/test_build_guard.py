"""Which fleets the operator may write children for: only those kopf has put its finalizer
on, and not while they are deleted (the create-then-delete race in
tests/integration/operator/test_delete_race.py)."""

from __future__ import annotations

from typing import Any

from shoal.operator.handlers import FINALIZER, _not_ours_to_build


def fleet(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "f", "namespace": "ns", **meta}}


def test_children_are_written_only_for_a_fleet_that_carries_the_finalizer() -> None:
    assert not _not_ours_to_build(fleet(finalizers=[FINALIZER]))
    assert not _not_ours_to_build(fleet(finalizers=["other/one", FINALIZER]))
    # Just created: kopf has not added its finalizer yet, so a delete now would remove the
    # fleet without the finalizer's handler, and any child written now would be orphaned.
    assert _not_ours_to_build(fleet())
    assert _not_ours_to_build(fleet(finalizers=["other/one"]))
    # Being deleted, or gone: its children belong to the finalizer.
    assert _not_ours_to_build(
        fleet(finalizers=[FINALIZER], deletionTimestamp="2026-12-07T00:00:00Z")
    )
    assert _not_ours_to_build(None)
