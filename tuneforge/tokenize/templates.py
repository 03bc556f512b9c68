"""Chat templates: the default ChatML template, message normalisation and prompt rendering.

Training, evaluation and serving all render conversations through the tokenizer's own chat
template (`tokenizer.apply_chat_template`), so a fine-tuned model sees the same text at
inference as in training. A tokenizer without a template gets `DEFAULT_CHAT_TEMPLATE`, which
`save_pretrained` then writes next to the weights.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# ChatML, as used by Qwen2.5 and many fine-tunes:
#
#   <|im_start|>system\n{system}<|im_end|>\n
#   <|im_start|>user\n{user}<|im_end|>\n
#   <|im_start|>assistant\n{answer}<|im_end|>\n
#
# With `tools`, a "# Tools" section listing one JSON schema per line is appended to the system
# turn (a system turn is created when there is none). An assistant's `tool_calls` follow its
# content as `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` blocks, and tool results
# are their own `tool` turns. `add_generation_prompt=True` ends the text with the assistant header
# `<|im_start|>assistant\n`, which is where generation starts. No default system prompt is
# injected: the text contains exactly what the data says.
DEFAULT_CHAT_TEMPLATE: str = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] %}"
    "{{- messages[0]['content'] + '\\n\\n' }}"
    "{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions. Function signatures:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each call, reply with <tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}'
    "\\n</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (tools and loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] %}{{- message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- if call['function'] is defined %}{%- set call = call['function'] %}{%- endif %}"
    "{%- if message['content'] or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}"
    "{%- else %}{{- call['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give `tokenizer` the ChatML `DEFAULT_CHAT_TEMPLATE` when it has no chat template.

    The template is stored on the tokenizer, so `save_pretrained` writes it and training and
    serving render identically. `<|im_start|>` / `<|im_end|>` are added as special tokens when
    the vocabulary lacks them, so each is one token; the model's embeddings must then be resized
    to `len(tokenizer)`. Returns True if the template was set, False if one was already there.
    """
    if getattr(tokenizer, "chat_template", None):
        return False
    vocab = tokenizer.get_vocab()
    missing = [tok for tok in (IM_START, IM_END) if tok not in vocab]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(tok, special=True, normalized=False) for tok in missing],
            special_tokens=True,
        )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def _normalize_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """Parse OpenAI's JSON-string `arguments` into a dict, as Hugging Face templates expect."""
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    try:
        arguments = json.loads(fn["arguments"])
    except json.JSONDecodeError:
        return call  # leave unparseable arguments as the string the user wrote
    return {**call, "function": {**fn, "arguments": arguments}}


def _join_text_parts(parts: list) -> str:
    """OpenAI's content-parts form ([{"type": "text", "text": ...}, ...]) as one string."""
    texts = []
    for part in parts:
        if not (isinstance(part, dict) and part.get("type") == "text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"only text content parts can be trained, got a {kind!r} part")
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bring OpenAI-style messages into the shape Hugging Face chat templates expect.

    `content: None` becomes "" (templates apply string filters to it), a list of text parts
    becomes their concatenation, tool-call arguments given as JSON strings become dicts, and
    TuneForge's own `weight` key is dropped. Messages that need no change are passed through
    without copying.
    """
    out = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"each message must be a dict with a 'role', got {message!r}")
        calls = message.get("tool_calls")
        content = message.get("content")
        if content is None or isinstance(content, list) or "weight" in message or calls:
            message = {k: v for k, v in message.items() if k != "weight"}
            if content is None:
                message["content"] = ""
            elif isinstance(content, list):
                message["content"] = _join_text_parts(content)
            if calls:
                message["tool_calls"] = [_normalize_tool_call(c) for c in calls]
        out.append(message)
    return out


def render_text(
    conversations: list[list[dict[str, Any]]],
    tokenizer: Any,
    tools: list | None,
    add_generation_prompt: bool,
) -> list[str]:
    """Render several (already normalised) conversations with the tokenizer's chat template.

    One batched call: transformers compiles the template once (it is cached) and renders each
    conversation in turn.
    """
    if not conversations:
        return []
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template; call ensure_chat_template(tokenizer) first"
        )
    return tokenizer.apply_chat_template(
        conversations,
        tools=tools or None,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def render_prompt(messages: list[dict], tokenizer: Any, tools: list | None = None) -> list[int]:
    """Token ids of the generation prompt for `messages`, exactly as training renders them.

    The conversation is rendered with `add_generation_prompt=True` (it ends with the assistant
    header) and tokenized without adding special tokens, since templates write their own BOS.

    Example:
        >>> ids = render_prompt([{"role": "user", "content": "Hi"}], tokenizer)
        >>> out = model.generate(torch.tensor([ids]), max_new_tokens=32)
    """
    (text,) = render_text([normalize_messages(messages)], tokenizer, tools, True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
