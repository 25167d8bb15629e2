"""What a client cannot do to the ingress with the shape or pace of its request body: nest
it deeper than anything reads (a 400, never a 500 with a traceback), or trickle it in (a 408
after the read deadline)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request
from tests.unit.serving.test_ingress import client_for, make_endpoint  # noqa: F401

from shoal.serving.http import read_body
from shoal.serving.openai_api import MAX_JSON_DEPTH, ApiError, load_json_object


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deeply_nested_json_is_a_400(client_for: Any, depth: int) -> None:  # noqa: F811
    tc = client_for(make_endpoint(["fast"]))
    nested = "[" * depth + "]" * depth
    body = '{"model": "fast", "messages": [{"role": "user", "content": "x"}], "x": ' + nested
    r = tc.post("/v1/chat/completions", content=body + "}",
                headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    assert "nests deeper" in r.json()["error"]["message"]


def test_nesting_within_the_limit_is_read() -> None:
    depth = MAX_JSON_DEPTH - 1
    assert load_json_object(('{"a": ' + "[" * depth + "]" * depth + "}").encode())


def test_a_body_that_does_not_arrive_in_time_is_a_408() -> None:
    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(30)  # a client that never sends its body
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}

    async def read() -> bytes:
        return await read_body(Request(scope, trickle), 1 << 20, timeout=0.2)

    with pytest.raises(ApiError) as info:
        asyncio.run(read())
    assert info.value.status == 408
