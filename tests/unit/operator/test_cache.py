"""The operator's object cache: newer wins, deletions stick until a newer object appears."""

from __future__ import annotations

from typing import Any

from shoal.operator.cache import ObjectCache

KEY = ("shoal.dev/v1alpha1", "ModelFleet", "ns", "f")


def _fleet(version: str, **status: Any) -> dict[str, Any]:
    return {"apiVersion": KEY[0], "kind": KEY[1], "status": status,
            "metadata": {"namespace": "ns", "name": "f", "resourceVersion": version,
                         "managedFields": [{"manager": "kubectl"}]}}  # fmt: skip


def test_an_older_copy_never_replaces_a_newer_one() -> None:
    cache = ObjectCache()
    cache.put(_fleet("10", phase="new"))
    cache.put(_fleet("9", phase="old"))  # a watch event lagging behind our own write
    assert cache.get(KEY)["status"] == {"phase": "new"}  # type: ignore[index]
    cache.put(_fleet("11", phase="newer"))
    assert cache.get(KEY)["status"] == {"phase": "newer"}  # type: ignore[index]


def test_managed_fields_are_not_kept() -> None:
    cache = ObjectCache()
    cache.put(_fleet("1"))
    assert "managedFields" not in cache.get(KEY)["metadata"]  # type: ignore[index]


def test_a_deleted_object_is_not_brought_back_by_a_late_event() -> None:
    cache = ObjectCache()
    cache.put(_fleet("5"))
    cache.deleted(_fleet("6"))
    cache.put(_fleet("5"))
    assert cache.get(KEY) is None and cache.is_gone(KEY)
    cache.put(_fleet("8"))  # created again
    assert cache.get(KEY) is not None and not cache.is_gone(KEY)
    assert cache.keys(KEY[0], KEY[1]) == [("ns", "f")]
