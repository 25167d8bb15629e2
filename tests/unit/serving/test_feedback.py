"""Feedback on the fleet's answers: signed ids any replica can check, counted per model and
cluster, forged ids refused."""

from __future__ import annotations

import dataclasses
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


def test_an_id_is_bound_to_the_tenant_that_got_the_answer() -> None:
    ids = CompletionIds(b"k" * 32)
    cid = ids.issue("chatcmpl-", "math", 7, tenant="team-a")
    assert ids.verify(cid, "team-a").model == "math"
    for other in ("team-b", ""):
        with pytest.raises(ApiError) as info:
            ids.verify(cid, other)
        assert info.value.status == 400 and info.value.code == "invalid_completion_id"


def test_the_request_s_tenant_is_bound_where_ids_are_issued() -> None:
    import contextvars

    from shoal.serving.feedback import bind_tenant

    ids = CompletionIds(b"k" * 32)

    def answer() -> str:
        bind_tenant("team-a")
        return ids.issue("chatcmpl-", "math", None)

    cid = contextvars.copy_context().run(answer)  # one request's context
    assert ids.verify(cid, "team-a").model == "math"
    assert ids.issue("chatcmpl-", "m", None) != cid  # this context: no tenant bound
    ids.verify(ids.issue("chatcmpl-", "m", None), "")


def test_one_score_per_id_within_the_window_at_a_bounded_rate() -> None:
    from shoal.serving.feedback import FeedbackLedger

    ids = CompletionIds(b"k" * 32)
    ledger = FeedbackLedger(window=3600, rate=1, burst=3)
    cid = ids.issue("chatcmpl-", "math", 1)
    who = ids.verify(cid)
    now = who.issued_at + 1
    ledger.admit(cid, who, "", now)
    with pytest.raises(ApiError) as replay:
        ledger.admit(cid, who, "", now)
    assert (replay.value.status, replay.value.code) == (409, "feedback_already_given")
    old = dataclasses.replace(who, issued_at=now - 7200)
    with pytest.raises(ApiError) as late:
        ledger.admit("chatcmpl-other", old, "", now)
    assert (late.value.status, late.value.code) == (400, "feedback_window_passed")
    with pytest.raises(ApiError) as flood:
        ledger.admit(ids.issue("chatcmpl-", "math", 1), who, "", now)  # the 4th in a second
    assert flood.value.status == 429
    ledger.admit(ids.issue("chatcmpl-", "math", 1), who, "team-b", now)  # a tenant of its own
    fresh = ids.issue("chatcmpl-", "math", 1)
    ledger.admit(fresh, ids.verify(fresh), "", now + 2)  # the bucket refills
