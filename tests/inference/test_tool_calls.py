"""Tool-call formats: which family a template speaks, parsing, streaming, forcing grammars."""

from __future__ import annotations

import json

import pytest

from tuneforge.inference.constraint import allowed_rows, compile_grammar, ll_tokenizer
from tuneforge.inference.tool_calls import (
    ToolStreamer,
    forcing_grammar,
    merge_deltas,
    parse,
    tool_family,
)
from tuneforge.tokenize.templates import DEFAULT_CHAT_TEMPLATE

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}

# One reply with two calls, as each family writes it.
REPLIES = {
    "hermes": 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris",'
    ' "days": 2}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
    '"Rome {x}", "days": 1}}\n</tool_call>',
    "llama3": '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}; '
    '{"name": "get_weather", "parameters": {"city": "Rome {x}", "days": 1}}',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}, '
    '{"name": "get_weather", "arguments": {"city": "Rome {x}", "days": 1}}]',
}
ARGUMENTS = [{"city": "Paris", "days": 2}, {"city": "Rome {x}", "days": 1}]


def test_family_of_templates():
    assert tool_family(DEFAULT_CHAT_TEMPLATE) == "hermes"  # TuneForge's own template
    assert tool_family("{{- '<tool_call>\\n' }}...<|im_start|>") == "hermes"  # Qwen2.5
    assert tool_family("{{- '<|python_tag|>' }}<|eot_id|>") == "llama3"
    assert tool_family('<|eot_id|>{"name": ..., "parameters": ...}') == "llama3"
    assert tool_family("{{- '[TOOL_CALLS]' }}[INST]") == "mistral"
    assert tool_family(None) == "hermes"


@pytest.mark.parametrize("family", sorted(REPLIES))
def test_parse_several_calls(family):
    parsed = parse(family, REPLIES[family], final=True)
    assert [c.name for c in parsed.calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.arguments) for c in parsed.calls] == ARGUMENTS
    assert parsed.content.strip() == ("Let me check." if family == "hermes" else "")


@pytest.mark.parametrize("family", sorted(REPLIES))
def test_not_a_call_is_content(family):
    for text in ("Just words.", "{not json", '{"name": 3}', "[1, 2]"):
        parsed = parse(family, text, final=True)
        assert parsed.calls == [] and parsed.content == text


@pytest.mark.parametrize("family", sorted(REPLIES))
def test_streaming_sends_name_first_then_argument_pieces(family):
    text = REPLIES[family]
    streamer = ToolStreamer(family)
    pieces = []
    for i in range(0, len(text), 4):  # four characters per token
        pieces += streamer.feed(text[i : i + 4])
    last, called = streamer.finish()
    pieces += last
    assert called
    calls = [p["tool_calls"][0] for p in pieces if "tool_calls" in p]
    starts = [c for c in calls if "id" in c]
    assert [c["function"]["name"] for c in starts] == ["get_weather", "get_weather"]
    assert all(c["function"]["arguments"] == "" for c in starts)  # the name comes first
    for index, expected in enumerate(ARGUMENTS):
        args = [c["function"]["arguments"] for c in calls if c["index"] == index]
        assert len([a for a in args if a]) > 2  # arguments in pieces
        assert json.loads("".join(args)) == expected
    content = "".join(p.get("content", "") for p in pieces)
    assert content.strip() == ("Let me check." if family == "hermes" else "")
    merged = merge_deltas(pieces)
    assert [json.loads(c["function"]["arguments"]) for c in merged["tool_calls"]] == ARGUMENTS


def test_streaming_without_calls_holds_back_only_a_possible_tag():
    streamer = ToolStreamer("hermes")
    assert streamer.feed("Hello <tool") == [{"content": "Hello "}]
    assert streamer.feed("s are") == [{"content": "<tools are"}]
    assert streamer.finish() == ([], False)


@pytest.mark.parametrize("family", sorted(REPLIES))
def test_forcing_grammar_accepts_calls_and_nothing_else(family, tiny_tokenizer):
    from tuneforge.inference.constraint import lark_grammar

    lltok = ll_tokenizer(tiny_tokenizer, (tiny_tokenizer.eos_token_id,))
    grammar = lark_grammar(forcing_grammar(family, [TOOL], parallel=True))
    compact = {
        "hermes": '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","days":2}}'
        "\n</tool_call>",
        "llama3": '{"name":"get_weather","parameters":{"city":"Paris","days":2}}',
        "mistral": '[{"name":"get_weather","arguments":{"city":"Paris","days":2}}]',
    }[family]
    matcher = compile_grammar(lltok, grammar).matcher()
    for token in tiny_tokenizer(compact, add_special_tokens=False)["input_ids"]:
        allowed = allowed_rows([matcher], len(tiny_tokenizer), len(tiny_tokenizer))
        assert allowed[0, token], (family, tiny_tokenizer.decode([token]))
        assert matcher.consume_token(token)
    assert matcher.is_accepting()
    # A wrong argument type is not allowed: after `"days":` only digits (or "-") may follow.
    wrong = compile_grammar(lltok, grammar).matcher()
    prefix = compact[: compact.index('"days":') + len('"days":')]
    for token in tiny_tokenizer(prefix, add_special_tokens=False)["input_ids"]:
        assert wrong.consume_token(token)
    quote = tiny_tokenizer('"', add_special_tokens=False)["input_ids"]
    assert not allowed_rows([wrong], len(tiny_tokenizer), len(tiny_tokenizer))[0, quote[0]]
