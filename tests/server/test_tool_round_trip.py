"""Round trip: fine-tune on OpenAI-format tool conversations, serve, call the tool, continue.

A tiny model is fully fine-tuned (TuneForge's own training, a few dozen steps) on chats whose
assistant calls `get_weather` and then answers from the tool's result. Served next to the
base model, the official client gets a `tool_calls` reply it can execute; the `tool` message
with the result continues the conversation.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

from tests.training.train_data import run_recipe
from tuneforge.training.config import load_config

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Quito"]


def weather(city: str) -> dict:
    """The tool the client executes."""
    return {"city": city, "celsius": len(city) * 3}


def _conversation(city: str, k: int) -> dict:
    args = json.dumps({"city": city})
    call = {
        "id": f"call_{k}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": args},
    }
    result = weather(city)
    return {
        "tools": [TOOL],
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{k}", "content": json.dumps(result)},
            {"role": "assistant", "content": f"It is {result['celsius']} C in {city}."},
        ],
    }


def fine_tune(model_store, folder, name: str, examples: int, epochs: int, lr: float) -> str:
    """A full fine-tune of the store's base model on tool conversations, saved in the store."""
    rng = random.Random(0)
    lines = [json.dumps(_conversation(rng.choice(CITIES), k)) for k in range(examples)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    cfg = load_config(
        None,
        {
            "model.name_or_path": str(model_store / "tiny-llama"),
            "data.train": str(folder / "train.jsonl"),
            "output.dir": str(model_store / name),
            "method": "full",
            "optim.epochs": epochs,
            "optim.batch_size": 8,
            "optim.lr": lr,
            "optim.warmup": 0,
            "model.dtype": "fp32",
        },
    )
    run_recipe(cfg)
    return name


def _continue(client, model: str, ask: list, message) -> str:
    """Execute the reply's call, send the result back; the follow-up reply's text."""
    (call,) = message.tool_calls
    assert call.function.name == "get_weather"
    result = weather(**json.loads(call.function.arguments))
    follow = [
        *ask,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    reply = client.chat.completions.create(
        model=model, messages=follow, tools=[TOOL], temperature=0, max_tokens=32
    )
    assert reply.choices[0].message.tool_calls is None
    return reply.choices[0].message.content


ASK = [{"role": "user", "content": "Weather in Oslo?"}]


def test_tool_fine_tune_serves_executable_calls(client, model_store, tmp_path):
    """A short fine-tune (two steps): `required` makes it call the tool with arguments of the
    tool's schema, the client executes the call, and the `tool` message continues the chat."""
    model = fine_tune(model_store, tmp_path, "acme/tools:v0", examples=16, epochs=1, lr=5e-3)
    try:
        forced = client.chat.completions.create(
            model=model, messages=ASK, tools=[TOOL], tool_choice="required", max_tokens=64, seed=0
        )
        choice = forced.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert isinstance(_continue(client, model, ASK, choice.message), str)
    finally:
        shutil.rmtree(model_store / model)


@pytest.mark.slow  # ~200 training steps: minutes on a small CPU
def test_tool_fine_tune_calls_on_its_own(client, model_store, tmp_path):
    """Trained long enough, the fine-tune calls the tool with `auto` (no constraint), with
    arguments of the tool's schema, and answers in the trained form from the tool's result.
    (Copying the question's city is beyond a 2-layer, 64-wide model: it names one it saw.)"""
    model = fine_tune(model_store, tmp_path, "acme/tools:v1", examples=64, epochs=25, lr=1e-2)
    try:
        auto = client.chat.completions.create(
            model=model, messages=ASK, tools=[TOOL], temperature=0, max_tokens=64
        )
        choice = auto.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message.content
        city = json.loads(choice.message.tool_calls[0].function.arguments)["city"]
        assert city in CITIES
        assert " C in " in _continue(client, model, ASK, choice.message)
    finally:
        shutil.rmtree(model_store / model)
