"""Structured outputs and tool calls on the real SmolLM2-135M-Instruct (49k vocabulary)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.server.conftest import API_KEY, settings_for, start_server, stop_server

TICKET = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 40},
        "priority": {"enum": ["low", "medium", "high"]},
        "labels": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 2},
        "customer": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 30}, "vip": {"type": "boolean"}},
            "required": ["name", "vip"],
            "additionalProperties": False,
        },
    },
    "required": ["summary", "priority", "labels", "customer"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "integer"}, "urgent": {"type": "boolean"}},
            "required": ["order_id", "urgent"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def real_client(smollm2, tmp_path_factory):
    from openai import OpenAI

    settings = settings_for(
        smollm2.parent, tmp_path_factory.mktemp("data"), base_model=smollm2.name,
        api_keys=[API_KEY], max_tokens_cap=256,
    )  # fmt: skip
    running = start_server(settings)
    with OpenAI(base_url=running.v1, api_key=API_KEY, max_retries=0, timeout=300) as client:
        yield client, smollm2.name
    stop_server(running)


@pytest.mark.real_model
def test_real_model_json_schema_and_required_tool_call(real_client):
    client, model = real_client
    ask = "Anna Berg (a VIP) says order 1234 never arrived. File a support ticket."
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "ticket", "schema": TICKET, "strict": True},
    }
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": ask}],
        response_format=fmt,
        temperature=0,
        max_tokens=160,
    )
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content), TICKET)
    call = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": ask}],
        tools=[TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
        parallel_tool_calls=False,
    )
    choice = call.choices[0]
    assert choice.finish_reason == "tool_calls"
    (made,) = choice.message.tool_calls
    assert made.function.name == "lookup_order"
    jsonschema.validate(json.loads(made.function.arguments), TOOL["function"]["parameters"])
