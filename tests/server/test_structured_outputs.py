"""Structured outputs and tool calls through the official `openai` client on the real server.

The base model is an untrained 2-layer model: whatever it would say, constrained decoding
must make the reply valid JSON of the schema, or a valid call of a tool.
"""

from __future__ import annotations

import json
import shutil
from enum import Enum

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tuneforge.modeling.tiny import build_model, save_model_folder

CHAT = [{"role": "user", "content": "Describe a person as JSON."}]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "home": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "integer", "minimum": 0, "maximum": 99999},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "role", "tags", "home", "active"],
    "additionalProperties": False,
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
LONG = "tiny-long"  # a 2,048-position model: tool schemas fill the tiny tokenizer's context


@pytest.fixture(scope="module", autouse=True)
def long_model(model_store, tiny_tokenizer):
    folder = model_store / LONG
    save_model_folder(
        build_model(tiny_tokenizer, max_positions=2048, seed=7), tiny_tokenizer, folder
    )
    yield LONG
    shutil.rmtree(folder)


def _chat(client, **kw):
    kw.setdefault("max_tokens", 160)
    kw.setdefault("temperature", 1.0)
    kw.setdefault("model", "tiny-llama")
    return client.chat.completions.create(**kw)


def _tools(client, **kw):
    kw.setdefault("max_tokens", 256)
    return _chat(client, model=LONG, **{"messages": ASK, "tools": TOOLS, **kw})


# -- json_schema ---------------------------------------------------------------------------------


def test_json_schema_strict_nested_enums_arrays(client):
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    out = _chat(client, messages=CHAT, response_format=fmt, n=4, seed=3)
    for choice in out.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    # The same request unconstrained is not JSON of the schema (the model is untrained).
    free = _chat(client, messages=CHAT, seed=3, max_tokens=40)
    with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(free.choices[0].message.content), PERSON)


def test_json_schema_streamed_and_greedy(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    chunks = list(_chat(client, messages=CHAT, response_format=fmt, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), PERSON)
    assert chunks[-1].choices[0].finish_reason == "stop"
    whole = _chat(client, messages=CHAT, response_format=fmt, temperature=0)
    assert whole.choices[0].message.content == text


class Role(str, Enum):
    admin = "admin"
    guest = "guest"


class Address(BaseModel):
    city: str = Field(max_length=10)
    floors: list[int] = Field(max_length=3)


class Person(BaseModel):
    name: str = Field(max_length=12)
    role: Role
    address: Address


def test_parse_with_a_pydantic_model(client):
    out = client.chat.completions.parse(
        model="tiny-llama",
        messages=CHAT,
        response_format=Person,
        max_tokens=160,
        temperature=1.0,
        seed=5,
    )
    person = out.choices[0].message.parsed
    assert isinstance(person, Person)
    assert isinstance(person.address, Address) and person.role in set(Role)


def test_bad_schemas_are_400(client):
    for fmt in (
        {"type": "json_schema", "json_schema": {"name": "x"}},  # no schema
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "extra": 1}},
    ):
        with pytest.raises(openai.BadRequestError) as err:
            _chat(client, messages=CHAT, response_format=fmt, max_tokens=4)
        assert err.value.body["param"].startswith("response_format"), err.value.body


# -- tool calls ----------------------------------------------------------------------------------


def _check_calls(message, names=SCHEMAS):
    assert message.tool_calls
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_call_is_valid(client):
    out = _tools(client, tool_choice="required", n=4, seed=1)
    for choice in out.choices:
        assert choice.finish_reason == "tool_calls"
        _check_calls(choice.message)


def test_named_tool_call(client):
    choice = {"type": "function", "function": {"name": "get_time"}}
    out = _tools(client, tool_choice=choice, seed=2)
    message = out.choices[0].message
    _check_calls(message, names={"get_time"})
    with pytest.raises(openai.BadRequestError) as err:
        _tools(client, tool_choice={"type": "function", "function": {"name": "nope"}}, max_tokens=4)
    assert err.value.body["param"] == "tool_choice"


def test_parallel_tool_calls(client):
    """With parallel calls allowed a reply may hold several; with `parallel_tool_calls=false`
    never more than one."""
    many = _tools(client, tool_choice="required", n=8, seed=4)
    counts = [len(c.message.tool_calls) for c in many.choices]
    assert max(counts) >= 2, counts
    for choice in many.choices:
        _check_calls(choice.message)
        assert len({c.id for c in choice.message.tool_calls}) == len(choice.message.tool_calls)
    one = _tools(client, tool_choice="required", n=8, seed=4, parallel_tool_calls=False)
    assert [len(c.message.tool_calls) for c in one.choices] == [1] * 8


def test_streamed_tool_calls_name_first_then_arguments(client):
    kw = {"tool_choice": "required", "seed": 11}
    whole = _tools(client, **kw).choices[0].message
    chunks = list(_tools(client, stream=True, **kw))
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    first = pieces[0]
    assert first.id and first.function.name == whole.tool_calls[0].function.name
    assert len(pieces) > 2  # the arguments arrive in several pieces
    by_index: dict[int, str] = {}
    for p in pieces:
        by_index[p.index] = by_index.get(p.index, "") + (p.function.arguments or "")
    assert [by_index[i] for i in sorted(by_index)] == [
        t.function.arguments for t in whole.tool_calls
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_and_follow_up(client):
    out = _tools(client, tool_choice="none", max_tokens=8)
    assert out.choices[0].message.tool_calls is None
    call = _tools(client, tool_choice="required", seed=3)
    message = call.choices[0].message
    follow = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": '{"temp": 21}'},
    ]
    reply = _tools(client, messages=follow, max_tokens=8)
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, model=LONG, messages=ASK, tool_choice="required", max_tokens=4)
    assert err.value.body["param"] == "tool_choice"


def test_unknown_nested_options_are_refused(client):
    """Fields inside `stream_options`, `tools` and `tool_choice` that are not implemented are
    refused by name, like top-level ones."""
    cases = [
        ({"stream": True, "stream_options": {"include_usage": True, "include_obfuscation": True}}),
        ({"tools": [{**TIME, "cache_control": {}}]}),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"},
          "allowed": []}}),
    ]  # fmt: skip
    for extra in cases:
        with pytest.raises(openai.BadRequestError) as err:
            _chat(client, model=LONG, messages=ASK, max_tokens=2, extra_body=extra)
        assert err.value.body["param"].split(".")[0].split("[")[0] in extra, err.value.body
