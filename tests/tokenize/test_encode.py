"""Encoding examples: which tokens are trained, for real chat templates and the other formats."""

from __future__ import annotations

import copy

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tests.conftest import CORPUS
from tuneforge.tokenize import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    Encoded,
    encode,
    ensure_chat_template,
    fit_length,
    render_prompt,
    token_view,
)

CHAT = {
    "messages": [
        {"role": "system", "content": "Please help."},
        {"role": "user", "content": "I lost my card."},
        {"role": "assistant", "content": "Sure, I have sent a new one."},
        {"role": "user", "content": "What is my balance?"},
        {"role": "assistant", "content": "Your balance is 120 dollars."},
    ]
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_balance",
            "description": "Balance of an account",
            "parameters": {"type": "object", "properties": {"account": {"type": "string"}}},
        },
    }
]
TOOL_CHAT = {
    "tools": TOOLS,
    "messages": [
        {"role": "user", "content": "What is my balance?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_balance", "arguments": '{"account": "12"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"balance": 120}'},
        {"role": "assistant", "content": "Your balance is 120 dollars."},
    ],
}


def trained_runs(enc: Encoded, tok) -> list[str]:
    """The decoded text of each maximal run of trained tokens."""
    runs, cur = [], []
    for token_id, label in zip(enc.input_ids, enc.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token_id
            cur.append(token_id)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def template_ids(tok, messages, **kw) -> list[int]:
    return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"]


def with_weight(example: dict, index: int, weight: int) -> dict:
    ex = copy.deepcopy(example)
    ex["messages"][index]["weight"] = weight
    return ex


# ChatML (Qwen2.5) -------------------------------------------------------------------------------


def test_chatml_every_assistant_turn_trained_with_end_of_turn(qwen_tokenizer):
    enc = encode(CHAT, qwen_tokenizer)
    # Exactly the two replies and their <|im_end|>: no header, no "\n" after it, no system/user.
    assert trained_runs(enc, qwen_tokenizer) == [
        "Sure, I have sent a new one.<|im_end|>",
        "Your balance is 120 dollars.<|im_end|>",
    ]
    # The ids are the template's own tokenization of the whole conversation.
    assert enc.input_ids == template_ids(qwen_tokenizer, CHAT["messages"])
    assert len(enc.labels) == len(enc) and not enc.truncated


def test_chatml_weight_zero_and_last_assistant(qwen_tokenizer):
    skip_first = with_weight(CHAT, 2, 0)
    assert trained_runs(encode(skip_first, qwen_tokenizer), qwen_tokenizer) == [
        "Your balance is 120 dollars.<|im_end|>"
    ]
    last = encode(CHAT, qwen_tokenizer, train_on="last_assistant")
    assert trained_runs(last, qwen_tokenizer) == ["Your balance is 120 dollars.<|im_end|>"]
    # weight 0 on the last reply leaves nothing to train in last_assistant mode.
    assert encode(with_weight(CHAT, 4, 0), qwen_tokenizer, "last_assistant").num_trained == 0


def test_chatml_train_on_all(qwen_tokenizer):
    enc = encode(CHAT, qwen_tokenizer, train_on="all")
    assert enc.labels == enc.input_ids
    assert enc.input_ids == encode(CHAT, qwen_tokenizer).input_ids


def test_qwen_tools_masked_and_tool_call_trained(qwen_tokenizer):
    enc = encode(TOOL_CHAT, qwen_tokenizer)
    # The tool call (arguments parsed from OpenAI's JSON string) and the final answer are
    # trained; the tool schema in the system turn and the tool result are not.
    assert trained_runs(enc, qwen_tokenizer) == [
        '<tool_call>\n{"name": "get_balance", "arguments": {"account": "12"}}\n</tool_call><|im_end|>',
        "Your balance is 120 dollars.<|im_end|>",
    ]
    text = qwen_tokenizer.decode(enc.input_ids)
    assert '"name": "get_balance", "description"' in text  # the tools are rendered
    assert '<tool_response>\n{"balance": 120}\n</tool_response>' in text


def test_render_prompt_is_the_training_prefix(qwen_tokenizer):
    enc = encode(CHAT, qwen_tokenizer, train_on="last_assistant")
    prompt = render_prompt(CHAT["messages"][:-1], qwen_tokenizer)
    # What the server sends is exactly what training put before the trained reply.
    assert enc.input_ids[: len(prompt)] == prompt
    assert enc.labels[len(prompt) - 1] == IGNORE_INDEX
    assert enc.labels[len(prompt)] == enc.input_ids[len(prompt)]


# Llama-3 ----------------------------------------------------------------------------------------


def test_llama3_turns_trained_with_eot_and_single_bos(llama3_tokenizer):
    tok = llama3_tokenizer
    enc = encode(CHAT, tok)
    assert trained_runs(enc, tok) == [
        "Sure, I have sent a new one.<|eot_id|>",
        "Your balance is 120 dollars.<|eot_id|>",
    ]
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert enc.input_ids[0] == bos and enc.input_ids.count(bos) == 1
    assert enc.labels[0] == IGNORE_INDEX
    assert enc.input_ids == template_ids(tok, CHAT["messages"])
    # The header before each reply is masked.
    header = tok.encode(
        "<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False
    )
    first_reply = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    # The serving prompt (one BOS, from the template) is exactly the text before that reply.
    assert render_prompt(CHAT["messages"][:2], tok) == enc.input_ids[:first_reply]
    assert enc.input_ids[first_reply - len(header) : first_reply] == header
    assert all(
        label == IGNORE_INDEX for label in enc.labels[first_reply - len(header) : first_reply]
    )


def test_llama3_text_and_prompt_completion_get_one_bos(llama3_tokenizer):
    tok = llama3_tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    text = encode({"text": "Hello world"}, tok)
    assert text.input_ids[0] == bos and text.input_ids.count(bos) == 1 and text.input_ids[-1] == eos
    pc = encode({"prompt": "Hello", "completion": " world"}, tok)
    assert pc.input_ids[:2] == [bos, *tok.encode("Hello", add_special_tokens=False)]


# Other formats ----------------------------------------------------------------------------------


def test_prompt_completion_trains_completion_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt_ids = tok.encode("What is the capital of France?", add_special_tokens=False)
    completion_ids = tok.encode(" Paris", add_special_tokens=False)
    enc = encode({"prompt": "What is the capital of France?", "completion": " Paris"}, tok)
    assert enc.input_ids == prompt_ids + completion_ids + [tok.eos_token_id]
    assert enc.labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tok.eos_token_id]
    # An EOS the data already wrote is not doubled.
    again = encode({"prompt": "What is", "completion": " Paris<|endoftext|>"}, tok)
    assert again.input_ids.count(tok.eos_token_id) == 1
    every = encode({"prompt": "What is", "completion": " Paris"}, tok, train_on="all")
    assert every.labels == every.input_ids


def test_text_trains_everything_plus_eos(tiny_tokenizer):
    enc = encode({"text": "The quick brown fox."}, tiny_tokenizer)
    assert enc.input_ids == [*tiny_tokenizer.encode("The quick brown fox."), 0]
    assert enc.labels == enc.input_ids and enc.num_trained == len(enc)


def test_bad_examples_raise(qwen_tokenizer):
    pref = {"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}
    with pytest.raises(ValueError, match="preference"):
        encode(pref, qwen_tokenizer)
    with pytest.raises(ValueError, match="format"):
        encode({"question": "?"}, qwen_tokenizer)
    with pytest.raises(ValueError, match="train_on"):
        encode(CHAT, qwen_tokenizer, train_on="user")


def test_template_breaking_prefix_property_fails_loudly(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    # The header depends on the number of messages, so earlier text changes as turns are added.
    tok.chat_template = "turns={{ messages | length }}\n" + DEFAULT_CHAT_TEMPLATE
    with pytest.raises(ValueError, match="prefix"):
        encode(CHAT, tok)


# Template setup ---------------------------------------------------------------------------------


def test_ensure_chat_template_saves_and_adds_end_of_turn(tmp_path):
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    assert ensure_chat_template(tok) is True
    assert ensure_chat_template(tok) is False
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == DEFAULT_CHAT_TEMPLATE
    enc = encode(CHAT, loaded)
    assert trained_runs(enc, loaded) == [
        "Sure, I have sent a new one.<|im_end|>",
        "Your balance is 120 dollars.<|im_end|>",
    ]
    im_end = loaded.convert_tokens_to_ids("<|im_end|>")
    assert enc.input_ids.count(im_end) == 5  # one token per turn end


def test_default_template_renders_tools(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    ensure_chat_template(tok)
    enc = encode(TOOL_CHAT, tok)
    assert trained_runs(enc, tok) == [
        '<tool_call>\n{"name": "get_balance", "arguments": {"account": "12"}}\n</tool_call><|im_end|>',
        "Your balance is 120 dollars.<|im_end|>",
    ]
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\n# Tools\n") and '"name": "get_balance"' in text
    assert '<|im_start|>tool\n{"balance": 120}<|im_end|>' in text


# Length -----------------------------------------------------------------------------------------


def test_fit_length_drop_and_truncate():
    enc = Encoded([1, 2, 3, 4, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX, 6])
    assert fit_length(enc, 6) is enc
    assert fit_length(enc, 5) is None
    cut = fit_length(enc, 3, "truncate")
    assert cut.input_ids == [1, 2, 3] and cut.labels == [IGNORE_INDEX, IGNORE_INDEX, 3]
    assert cut.truncated and cut.num_trained == 1
    assert fit_length(enc, 2, "truncate") is None  # nothing trained would be left
    with pytest.raises(ValueError):
        fit_length(enc, 3, "shorten")


def test_token_view_covers_the_text(qwen_tokenizer):
    ex = {"prompt": "Prix: 5 €", "completion": " café"}  # multi-byte characters
    enc = encode(ex, qwen_tokenizer)
    view = token_view(enc, qwen_tokenizer)
    assert "".join(piece for piece, _ in view) == qwen_tokenizer.decode(enc.input_ids)
    assert "".join(piece for piece, trained in view if trained) == " café<|endoftext|>"


def test_opening_assistant_message_needs_weight_zero(qwen_tokenizer):
    greeting = {
        "messages": [
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "I lost my card."},
            {"role": "assistant", "content": "Sure."},
        ]
    }
    # Qwen's template cannot render an empty conversation: a clear error, with the way out.
    with pytest.raises(ValueError, match="weight"):
        encode(greeting, qwen_tokenizer)
    masked = encode(with_weight(greeting, 0, 0), qwen_tokenizer)
    assert trained_runs(masked, qwen_tokenizer) == ["Sure.<|im_end|>"]


def test_text_content_parts_are_joined(qwen_tokenizer):
    parts = copy.deepcopy(CHAT)
    parts["messages"][4]["content"] = [
        {"type": "text", "text": "Your balance "},
        {"type": "text", "text": "is 120 dollars."},
    ]
    assert encode(parts, qwen_tokenizer).input_ids == encode(CHAT, qwen_tokenizer).input_ids
    parts["messages"][4]["content"].append({"type": "image_url", "image_url": {"url": "x"}})
    with pytest.raises(ValueError, match="image_url"):
        encode(parts, qwen_tokenizer)
