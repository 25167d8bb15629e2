"""The whole OpenAI request through the fleet endpoint, for real: Ray Serve, two llama.cpp
models (tiny generated GGUFs) and a simulated one, spoken to with the official ``openai``
client and LangChain's ``ChatOpenAI``.

Tools, ``response_format`` and logprobs reach llama.cpp (llama-cpp-python's own OpenAI
implementation: grammars from JSON schemas, tool calls, logprobs); the router ranks only the
models that can serve a request (capabilities and context windows), and a prompt too long
for one model is served by another without putting the first in cooldown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.contract import BuildArgs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (dev extra) not installed")

#: Static ranking: narrow first, so what it cannot serve shows the capability routing.
ORDER = ["narrow", "wide", "sim"]
UNIT_SCHEMA = {
    "type": "object",
    "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["unit"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now, in the unit asked for.",
        "parameters": UNIT_SCHEMA,
    },
}


def _tiny(name: str, **engine_args: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tier": "small",
        "engine": "llamacpp",
        "source": f"file:///tmp/shoal/models/pt-{name}.gguf",
        "resources": {"cpu": "500m"},
        "engineArgs": {"tiny_model": {"name": f"pt-{name}", "reply": f"{name} answers."},
                       **engine_args},
    }  # fmt: skip


@pytest.fixture(scope="module")
def fleet(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ray import serve

    from shoal.serving.app import build_app

    folder: Path = tmp_path_factory.mktemp("passthrough")
    models = [
        _tiny("narrow", n_ctx=256),
        _tiny("wide", n_ctx=2048, logits_all=True),
        {"name": "sim", "tier": "small", "engine": "simulated",
         "capabilities": {"contextWindow": 1024}},
    ]  # fmt: skip
    args = BuildArgs(
        fleet_name="passthrough",
        fleet={
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.1"}],
            "models": models,
        },
        policy={"strategy": "static", "staticOrder": ORDER},
        model_paths={m: str(folder / f"{m}.gguf") for m in ("narrow", "wide")},
        limits={"max_tokens": 256},
    )
    serve.run(build_app(args), name="passthrough", route_prefix="/")
    yield local_ray
    serve.delete("passthrough")


@pytest.fixture()
def client(fleet: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{fleet.base_url}/v1", api_key="unused", max_retries=0)


def _ask(client: Any, model: str = "auto", content: str = "What is the weather?", **kw: Any):  # type: ignore[no-untyped-def]
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=48, **kw
    )
    return raw.headers["x-shoal-model"], raw.parse()


def test_tool_call_with_a_named_function_and_its_result_round_trip(client: Any) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    model, chat = _ask(client, tools=[WEATHER_TOOL], tool_choice=choice)
    assert model == "narrow"  # the simulator cannot serve tools; narrow is ranked first
    message = chat.choices[0].message
    assert chat.choices[0].finish_reason == "tool_calls"
    call = message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), UNIT_SCHEMA)
    history = [
        {"role": "user", "content": "What is the weather?"},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    # The tool result is accepted: with tool_choice "none" the model answers in text...
    second = client.chat.completions.create(
        model=model, max_tokens=16, tools=[WEATHER_TOOL], tool_choice="none", messages=history
    )
    assert second.choices[0].message.content == "narrow answers."
    # ...and with "auto" (the default) it may answer or call again, in OpenAI's shapes.
    third = client.chat.completions.create(
        model=model, max_tokens=48, tools=[WEATHER_TOOL], messages=history
    )
    assert third.choices[0].finish_reason in ("stop", "tool_calls")
    for again in third.choices[0].message.tool_calls or []:
        jsonschema.validate(json.loads(again.function.arguments), UNIT_SCHEMA)


def test_tool_call_streamed(client: Any) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    stream = client.chat.completions.create(
        model="wide",
        messages=[{"role": "user", "content": "Weather?"}],
        max_tokens=48,
        tools=[WEATHER_TOOL],
        tool_choice=choice,
        stream=True,
    )
    arguments = ""
    finish = None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            arguments += delta_call.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), UNIT_SCHEMA)


@pytest.mark.parametrize("model", ["narrow", "wide"])
def test_response_format_json_schema(client: Any, model: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "unit", "schema": UNIT_SCHEMA}}
    served, chat = _ask(client, model, response_format=fmt)
    assert served == model
    jsonschema.validate(json.loads(chat.choices[0].message.content), UNIT_SCHEMA)


def test_logprobs_where_the_engine_keeps_them(client: Any) -> None:
    model, chat = _ask(client, logprobs=True, top_logprobs=2)
    assert model == "wide"  # only wide keeps logits (engineArgs logits_all)
    content = chat.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) <= 2 for t in content)
    assert "".join(t.token for t in content) == chat.choices[0].message.content


def test_logprobs_refused_by_name_where_the_engine_cannot(client: Any) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as info:
        _ask(client, "narrow", logprobs=True)
    err = info.value.body
    assert err["param"] == "logprobs" and "narrow" in err["message"]


def test_a_prompt_over_one_context_is_served_by_another(client: Any) -> None:
    # ~600 bytes: within narrow's 256 tokens by the router's estimate, over it once llama.cpp
    # tokenizes it (the tiny vocabulary spells most of it byte by byte).
    long = "Please describe the weather in detail. " * 15
    model, chat = _ask(client, content=long)
    assert model == "wide" and chat.choices[0].message.content == "wide answers."
    # narrow was not put in cooldown for it: the next short question goes to it again
    model, _ = _ask(client, content="Hi")
    assert model == "narrow"


def test_a_prompt_over_every_context_is_400(client: Any) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as info:
        _ask(client, content="word " * 3000)
    assert info.value.body["code"] == "context_length_exceeded"
    model, _ = _ask(client, content="Hi")
    assert model == "narrow"


def test_completions_pass_echo_through(client: Any) -> None:
    raw = client.completions.with_raw_response.create(
        model="wide", prompt="Say:", max_tokens=8, echo=True, logprobs=1
    )
    done = raw.parse()
    assert done.choices[0].text.startswith("Say:")
    assert done.choices[0].logprobs is not None and done.choices[0].logprobs.tokens


def test_a_parameter_no_engine_has_is_named(client: Any) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as info:
        _ask(client, modalities=["audio"], audio={"voice": "alloy", "format": "wav"})
    assert info.value.body["param"] in ("audio", "modalities")


def test_langchain_tools_and_structured_output(fleet: Any) -> None:
    langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai (dev)")
    from pydantic import BaseModel, Field

    llm = langchain_openai.ChatOpenAI(
        model="wide", base_url=f"{fleet.base_url}/v1", api_key="unused", max_tokens=48,
        max_retries=0,
    )  # fmt: skip

    class Unit(BaseModel):
        """The unit a temperature is given in."""

        unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})

    structured = llm.with_structured_output(Unit, method="json_schema").invoke("Which unit?")
    assert structured.unit in ("celsius", "fahrenheit")
    called = llm.bind_tools([WEATHER_TOOL], tool_choice="get_weather").invoke("Weather?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(called.tool_calls[0]["args"], UNIT_SCHEMA)
