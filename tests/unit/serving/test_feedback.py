"""Feedback on the fleet's answers: signed ids any replica can check, counted per model and
cluster, forged ids refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.serving.feedback import CompletionIds, parse_feedback
from shoal.serving.openai_api import ApiError


def test_an_id_names_its_model_and_cluster_for_every_replica_with_the_key() -> None:
    one, other = CompletionIds(b"k" * 32), CompletionIds(b"k" * 32)
    cid = one.issue("chatcmpl-", "math", 7)
    who = other.verify(cid)
    assert (who.model, who.cluster) == ("math", 7)
    assert other.verify(one.issue("cmpl-", "code", None)).cluster is None


@pytest.mark.parametrize(
    "forge",
    [
        lambda cid: cid.replace(".math.", ".code."),  # another model
        lambda cid: cid.replace(".7.", ".8."),  # another cluster
        lambda cid: cid[:-2] + ("AA" if not cid.endswith("AA") else "BB"),  # another MAC
        lambda cid: "chatcmpl-0123456789abcdef",  # an id of another server's shape
        lambda cid: "",
    ],
)
def test_a_forged_or_altered_id_is_refused(forge: Any) -> None:
    ids = CompletionIds(b"k" * 32)
    with pytest.raises(ApiError) as info:
        ids.verify(forge(ids.issue("chatcmpl-", "math", 7)))
    assert info.value.status == 400 and info.value.param == "id"


def test_another_key_does_not_verify() -> None:
    cid = CompletionIds(b"a" * 32).issue("chatcmpl-", "math", 1)
    with pytest.raises(ApiError):
        CompletionIds(b"b" * 32).verify(cid)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"id": "x", "score": 1.5}, "score"), ({"id": "x", "score": True}, "score"),
     ({"score": 0.5}, "id"), ({"id": "x"}, "score")],
)  # fmt: skip
def test_feedback_bodies_are_checked(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_feedback(json.dumps(body).encode())
    assert info.value.param == param


def test_feedback_body() -> None:
    assert parse_feedback(b'{"id": "chatcmpl-x", "score": 1}') == ("chatcmpl-x", 1.0)


def test_the_key_comes_from_a_file_where_the_environment_has_none(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a cluster the fleet's Secret is mounted as a file; replicas that read it agree."""
    path = tmp_path / "key"
    path.write_text("s3cret-key-of-the-fleet\n")
    monkeypatch.delenv("SHOAL_FEEDBACK_KEY", raising=False)
    monkeypatch.setenv("SHOAL_FEEDBACK_KEY_FILE", str(path))
    one, other = CompletionIds(), CompletionIds()
    assert one.shared and other.verify(one.issue("chatcmpl-", "math", 1)).model == "math"
    assert CompletionIds(b"s3cret-key-of-the-fleet").verify(one.issue("cmpl-", "m", 0)).cluster == 0
    monkeypatch.setenv("SHOAL_FEEDBACK_KEY_FILE", str(tmp_path / "absent"))  # optional Secret
    assert not CompletionIds().shared
