"""OpenAI wire format: validation errors, and bodies the official client's types accept."""

from __future__ import annotations

import dataclasses
import json

import pytest

from shoal.serving.engines.base import Chunk, GenerationRequest
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
         "tools.0.function"),
        (body(model="m", messages=[{"role": "user", "content": "x"}], stream=0), "stream"),
        (body(model="m", messages=[{"role": "user", "content": "x"}],
              tools=[{"type": "function", "function": {"name": "f"}}],
              tool_choice={"type": "function", "function": {"name": "g"}}), "tool_choice"),
    ],
)  # fmt: skip
def test_bad_chat_requests_are_400(raw: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat(raw, max_tokens_limit=100)
    err = info.value
    assert err.status == 400 and err.param == param
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_bad_completion_requests_are_400() -> None:
    with pytest.raises(ApiError) as info:
        parse_completion(body(model="m", prompt=["a", "b"]), max_tokens_limit=100)
    assert info.value.param == "prompt"
    with pytest.raises(ApiError) as info:
        parse_completion(body(model="m", prompt="a", best_of=2), max_tokens_limit=100)
    assert info.value.param == "best_of"


def test_nullable_fields_take_their_defaults() -> None:
    """OpenAI's description makes stream and n nullable; null means the default."""
    req = parse_chat(
        body(model="m", messages=[{"role": "user", "content": "x"}], stream=None, n=None),
        max_tokens_limit=100,
    )
    assert req.streaming is False and req.n is None


def test_parameters_shoal_does_not_read_travel_to_the_engine() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    req = parse_chat(
        body(model="m", messages=[{"role": "user", "content": "x"}], tools=tools,
             tool_choice="auto", response_format=fmt, logprobs=True, top_logprobs=2,
             user="team-a", stream=True, stream_options={"include_usage": True}),
        max_tokens_limit=100,
    )  # fmt: skip
    gen = to_generation(req, "rid", default_max_tokens=50, model_name="math", created=7)
    assert gen.params == {
        "tools": tools, "tool_choice": "auto", "response_format": fmt, "logprobs": True,
        "top_logprobs": 2,
    }  # fmt: skip
    assert gen.stream and gen.include_usage and gen.model_name == "math" and gen.created == 7


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


def _server_item() -> str:
    head = '"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m"'
    return (
        f'data: {{{head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}}}}]}}\n\n'
        f'data: {{{head},"choices":[{{"index":0,"delta":{{"content":"Hi"}},"finish_reason":null}}]}}\n\n'
        f'data: {{{head},"choices":[{{"index":0,"delta":{{}},"finish_reason":"length"}}]}}\n\n'
        f'data: {{{head},"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}}}\n\n'
        "data: [DONE]\n\n"
    )


def _read(request: GenerationRequest, item: str) -> list[Chunk]:
    from shoal.serving.clients import ServerStream, llm_server_events

    stream = ServerStream(request)
    out = [c for e, raw in llm_server_events(item) if (c := stream.feed(e, raw)) is not None]
    last = stream.close()
    return out + ([last] if last is not None else [])


def test_llm_server_stream_is_forwarded_as_it_is() -> None:
    """What ray.serve.llm's LLMServer streams (SSE strings from vLLM's OpenAI server code)
    goes to a streaming client byte for byte; the usage event only if it asked for it."""
    request = GenerationRequest("rid", "chat", 16, stream=True, include_usage=False)
    chunks = _read(request, _server_item())
    assert [c.text for c in chunks] == ["", "Hi", ""]
    assert chunks[-1].finish_reason == "length"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (3, 1)
    forwarded = b"".join(c.data or b"" for c in chunks).decode()
    # as vLLM wrote them, but for the id: the answer carries Shoal's (signed, for feedback)
    sent = "".join(_server_item().splitlines(keepends=True)[0:6])
    assert forwarded == sent.replace('"id":"chatcmpl-1"', '"id":"rid"')
    with_usage = _read(dataclasses.replace(request, include_usage=True), _server_item())
    assert b'"usage"' in (with_usage[-1].data or b"")


def test_llm_server_stream_becomes_one_body_for_a_unary_client() -> None:
    request = GenerationRequest("rid", "chat", 16, model_name="m", created=5)
    chunks = _read(request, _server_item())
    body = openai_types.chat.ChatCompletion.model_validate_json(chunks[-1].data or b"")
    assert body.choices[0].message.content == "Hi" and body.choices[0].finish_reason == "length"
    assert body.usage is not None and body.usage.total_tokens == 4 and body.id == "rid"


def test_llm_server_errors() -> None:
    from shoal.serving.clients import ModelFailed, ModelRejected, llm_server_events

    with pytest.raises(ModelFailed):
        llm_server_events('data: {"error": {"message": "boom", "code": 500}}\n\n')
    with pytest.raises(ModelRejected) as info:
        llm_server_events(
            'data: {"error": {"message": "This model\'s maximum context length is 256 '
            'tokens", "code": 400, "type": "BadRequestError"}}\n\n'
        )
    assert info.value.code == "context_length_exceeded"
