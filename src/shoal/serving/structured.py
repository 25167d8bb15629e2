"""Structured answers: tool calls made through a JSON-schema grammar, and the check that an
answer is what the client asked for.

Called by the llama.cpp engines (:mod:`shoal.serving.engines.xllamacpp`), whose runtime
constrains generation with a grammar built from a JSON schema but whose chat templates may
know nothing of tools (SmolLM2's does not). Shoal then makes the tool call itself:

- :func:`tool_plan` turns the client's ``tools`` and ``tool_choice`` into one JSON schema
  the model must answer in (a named function: its parameters; ``required``: one of the
  functions by name with its arguments; ``auto``: those or ``{"answer": "..."}``), and a
  system message that lists the tools;
- :meth:`ToolPlan.parse` turns the model's JSON back into OpenAI ``tool_calls`` (or the
  answer's text), and checks each call's arguments against the function's parameters.

:func:`schema_violation` checks a ``response_format: json_schema`` answer (valid JSON that
validates against the schema: bounds, lengths, enums, required, additionalProperties) with
a JSON Schema validator, so that what a grammar could not enforce never reaches the client
as if it were valid.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import jsonschema

#: Tool calls one answer may carry when the client allows parallel calls.
MAX_PARALLEL_CALLS = 4


class StructuredError(ValueError):
    """The model's answer is not what the client asked for (not JSON, or off the schema)."""


def schema_violation(schema: dict[str, Any], text: str) -> str | None:
    """Why ``text`` is not a JSON value valid under ``schema`` (None: it is)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"the answer is not valid JSON ({exc})"
    return _violation(schema, value)


def _violation(schema: dict[str, Any], value: Any) -> str | None:
    try:
        validator = jsonschema.validators.validator_for(schema)
        validator.check_schema(schema)
        error = jsonschema.exceptions.best_match(validator(schema).iter_errors(value))
    except jsonschema.exceptions.SchemaError as exc:
        return f"the schema itself is invalid: {exc.message}"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {where}: {error.message}"


def response_schema(params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a ``response_format: json_schema`` request (None: no schema)."""
    fmt = params.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = (fmt.get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, dict) else {"type": "object"}


@dataclass(frozen=True)
class ToolPlan:
    """How one request's tool calls are generated and read back."""

    #: The schema the model answers in (a grammar is built from it).
    schema: dict[str, Any]
    #: A system message that lists the tools (put in front of the conversation).
    system: str
    #: The functions' parameters by name.
    parameters: dict[str, dict[str, Any]]
    #: The one function the client named, if any (the answer is then its arguments).
    named: str | None
    #: Whether the model may answer in text instead (``tool_choice: auto``).
    may_answer: bool

    def parse(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The answer's text, or its tool calls (OpenAI's shape, arguments as JSON text).
        Raises :class:`StructuredError` when the answer is off the plan."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise StructuredError(f"the tool call is not valid JSON ({exc})") from None
        if self.named is not None:
            return None, [self._call(self.named, value)]
        problem = _violation(self.schema, value)
        if problem is not None:
            raise StructuredError(f"the tool call is off its schema {problem}")
        if isinstance(value, dict) and "answer" in value and self.may_answer:
            return str(value["answer"]), []
        items = value.get("calls") if isinstance(value, dict) else None
        calls = items if isinstance(items, list) else [value]
        return None, [self._call(c["name"], c.get("arguments", {})) for c in calls]

    def _call(self, name: str, arguments: Any) -> dict[str, Any]:
        schema = self.parameters.get(name)
        if schema is None:
            raise StructuredError(f"the model called an unknown function {name!r}")
        problem = _violation(schema, arguments)
        if problem is not None:
            raise StructuredError(f"the arguments of {name} are off its parameters {problem}")
        return {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }


def tool_plan(params: dict[str, Any], parallel: bool | None = None) -> ToolPlan | None:
    """The plan for a request's ``tools`` and ``tool_choice`` (None: no tool may be called);
    ``parallel``: the client's ``parallel_tool_calls`` (True: up to
    :data:`MAX_PARALLEL_CALLS` calls in one answer; otherwise one).

    A tool choice the request cannot satisfy (a name that is not among the tools) raises
    :class:`StructuredError`."""
    tools = [t for t in params.get("tools") or [] if isinstance(t, dict)]
    choice = params.get("tool_choice")
    if not tools or choice == "none":
        return None
    parameters = {
        t["function"]["name"]: _parameters(t["function"].get("parameters")) for t in tools
    }
    system = _system_prompt(tools)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in parameters:
            raise StructuredError(f"tool_choice names {name!r}, which is not among the tools")
        return ToolPlan(parameters[name], system, parameters, name, may_answer=False)
    options: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": schema},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, schema in parameters.items()
    ]
    one: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    if parallel is True or params.get("parallel_tool_calls") is True:
        one = {
            "type": "object",
            "properties": {
                "calls": {
                    "type": "array",
                    "items": one,
                    "minItems": 1,
                    "maxItems": MAX_PARALLEL_CALLS,
                }
            },
            "required": ["calls"],
            "additionalProperties": False,
        }
    may_answer = choice in (None, "auto")
    if may_answer:
        answer = {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        }
        schema: dict[str, Any] = {"anyOf": [one, answer]}
    else:
        schema = one
    return ToolPlan(schema, system, parameters, None, may_answer)


def _parameters(schema: Any) -> dict[str, Any]:
    if isinstance(schema, dict) and schema:
        return schema
    return {"type": "object", "properties": {}}


def _system_prompt(tools: list[dict[str, Any]]) -> str:
    lines = [
        "You can call these functions. To call one, answer with JSON "
        '{"name": <function name>, "arguments": <its arguments>}; to answer the user '
        'directly, answer with {"answer": <your answer>}.'
    ]
    for tool in tools:
        fn = tool["function"]
        lines.append(
            f"- {fn['name']}: {fn.get('description') or ''} "
            f"parameters: {json.dumps(_parameters(fn.get('parameters')))}"
        )
    return "\n".join(lines)


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation with tool calls and tool results written as text, for chat templates
    that know only system, user and assistant turns."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name
    for message in messages:
        role = message.get("role")
        text = _text(message.get("content"))
        if role == "assistant" and message.get("tool_calls"):
            for call in message["tool_calls"]:
                names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
            calls = [
                f"{(c.get('function') or {}).get('name')}"
                f"({(c.get('function') or {}).get('arguments')})"
                for c in message["tool_calls"]
            ]
            text = (text + "\n" if text else "") + "Called " + "; ".join(calls)
            out.append({"role": "assistant", "content": text})
        elif role in ("tool", "function"):
            name = message.get("name") or names.get(str(message.get("tool_call_id"))) or "the tool"
            out.append({"role": "user", "content": f"{name} returned: {text}"})
        elif role == "developer":
            out.append({"role": "system", "content": text})
        else:
            out.append({"role": role or "user", "content": text})
    return out


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(
        str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
    )
