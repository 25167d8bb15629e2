"""OpenAI wire format: validation errors, and bodies the official client's types accept."""

from __future__ import annotations

import json

import pytest

from shoal.serving.engines.base import Chunk
from shoal.serving.openai_api import (
    ApiError,
    StreamFormatter,
    chat_body,
    completion_body,
    parse_chat,
    parse_completion,
    query_text,
    to_generation,
)

openai_types = pytest.importorskip("openai.types", reason="openai client not installed")


def body(**kw: object) -> bytes:
    return json.dumps(kw).encode()


def events(raw: bytes) -> list[dict[str, object]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: ")
            out.append(json.loads(block[len("data: ") :]))
    return out


def test_parse_chat_and_generation_request() -> None:
    req = parse_chat(
        body(model="auto", messages=[{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": [{"type": "text", "text": "2+2?"}]}],
             max_tokens=20, temperature=0.5, stop="\n", unknown_field=1),
        max_tokens_limit=100,
    )  # fmt: skip
    assert query_text(req) == "2+2?"
    gen = to_generation(req, "rid", default_max_tokens=50)
    assert gen.kind == "chat" and gen.max_tokens == 20 and gen.stop == ["\n"]
    assert gen.messages[0] == {"role": "system", "content": "be brief"}


def test_completion_defaults_to_sixteen_tokens() -> None:
    req = parse_completion(body(model="m", prompt=["hello"]), max_tokens_limit=100)
    gen = to_generation(req, "rid", default_max_tokens=50)
    assert gen.prompt == "hello" and gen.max_tokens == 16 and query_text(req) == "hello"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (body(messages=[{"role": "user", "content": "x"}]), "model"),
        (body(model="m", messages=[]), "messages"),
        (body(model="m", messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (body(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=101), "max_tokens"),
        (body(model="m", messages=[{"role": "user", "content": "x"}], n=2), "n"),
        (body(model="m", messages=[{"role": "user", "content": "x"}], temperature=3), "temperature"),
        (body(model="m", messages=[{"role": "user", "content": "x"}], tools=[{"type": "function"}]),
         "tools"),
    ],
)  # fmt: skip
def test_bad_chat_requests_are_400(raw: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat(raw, max_tokens_limit=100)
    err = info.value
    assert err.status == 400 and err.param == param
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_bad_completion_requests_are_400() -> None:
    with pytest.raises(ApiError):
        parse_completion(body(model="m", prompt=["a", "b"]), max_tokens_limit=100)
    with pytest.raises(ApiError):
        parse_completion(body(model="m", prompt="a", echo=True), max_tokens_limit=100)


def test_bodies_match_openai_types() -> None:
    c = openai_types.chat.ChatCompletion.model_validate(
        chat_body("chatcmpl-1", 1700000000, "math", "4", "stop", 7, 1)
    )
    assert c.choices[0].message.content == "4" and c.usage and c.usage.total_tokens == 8
    t = openai_types.Completion.model_validate(
        completion_body("cmpl-1", 1700000000, "code", "x", "length", 3, 16)
    )
    assert t.choices[0].finish_reason == "length"


def test_chat_stream_events_match_openai_types() -> None:
    f = StreamFormatter("chat", "chatcmpl-1", 1700000000, "math", include_usage=True)
    raw = f.chunk(Chunk("Hel")) + f.chunk(Chunk("lo")) + f.chunk(Chunk("", "stop", 5, 2))
    evs = events(raw)
    chunks = [openai_types.chat.ChatCompletionChunk.model_validate(e) for e in evs]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens == 2


def test_completion_stream_events_match_openai_types() -> None:
    f = StreamFormatter("completion", "cmpl-1", 1700000000, 'we"ird', include_usage=False)
    evs = events(f.chunk(Chunk("a")) + f.chunk(Chunk("b", "length", 1, 2)))
    # OpenAI streams null finish reasons before the last event; the client reads them
    # without validation, so only the last event must validate in full.
    assert evs[0]["choices"] == [{"text": "a", "index": 0, "logprobs": None, "finish_reason": None}]
    last = openai_types.Completion.model_validate(evs[-1])
    assert last.model == 'we"ird' and last.choices[0].finish_reason == "length"
    assert last.choices[0].text == "b" and evs[0]["object"] == "text_completion"


def test_llm_server_output_is_read_back_into_chunks() -> None:
    """What ray.serve.llm's LLMServer streams (lists of SSE strings from vLLM's OpenAI
    server code) becomes engine chunks."""
    from shoal.serving.clients import ModelFailed, parse_llm_server_item

    head = '"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m"'
    item = (
        f'data: {{{head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}}}}]}}\n\n'
        f'data: {{{head},"choices":[{{"index":0,"delta":{{"content":"Hi"}},"finish_reason":null}}]}}\n\n'
        f'data: {{{head},"choices":[{{"index":0,"delta":{{}},"finish_reason":"length"}}]}}\n\n'
        f'data: {{{head},"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":1}}}}\n\n'
        "data: [DONE]\n\n"
    )
    chunks = parse_llm_server_item(item)
    assert [c.text for c in chunks] == ["", "Hi", "", ""]
    assert chunks[2].finish_reason == "length"
    assert (chunks[3].prompt_tokens, chunks[3].completion_tokens) == (3, 1)
    completion = 'data: {"id":"c","object":"text_completion","choices":[{"text":"ok","index":0,"finish_reason":"stop"}]}\n\n'
    assert parse_llm_server_item(completion)[0].text == "ok"
    with pytest.raises(ModelFailed):
        parse_llm_server_item('data: {"error": {"message": "boom", "code": 500}}\n\n')
