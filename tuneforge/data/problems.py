"""The problem catalogue: every code a check can report, its one-line fix and its severity.

Also the vocabulary the checks share: the keys each format reads, the roles a message takes,
and `show` / `kind_of`, which render a user's value in a message.
"""

from __future__ import annotations

import json
from typing import Any

from tuneforge.data.io import Format, Problem, Severity, detect_format

ROLES = frozenset({"system", "user", "assistant", "tool"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id"})
CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
PREFERENCE_KEYS = frozenset(
    {
        "input",
        "preferred_output",
        "non_preferred_output",
        "preferred_completion",
        "non_preferred_completion",
    }
)
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
PROMPT_COMPLETION_KEYS = frozenset({"prompt", "completion"})
TEXT_KEYS = frozenset({"text"})
# OpenAI's minimum; a fine-tune usually needs a few hundred examples to help.
MIN_EXAMPLES = 10
RECOMMENDED_EXAMPLES = 100
# Characters per token when no tokenizer is given (English text, BPE vocabularies).
CHARS_PER_TOKEN = 4
# A tokenizer's `model_max_length` above this is "no limit" (transformers uses 1e30).
NO_LIMIT = 10_000_000

# What to do about each kind of problem: one line, shown under the problem.
FIXES: dict[str, str] = {
    "data_type": "make each line a JSON object ({...})",
    "unknown_format": "give each example `messages` (chat), `prompt` and `completion`, "
    "`input` and `preferred_output` (preference) or `text` keys, or pass --format",
    "missing_messages_list": "give the example a non-empty `messages` list",
    "invalid_messages_type": "make `messages` a list of {role, content} objects",
    "message_not_object": 'make each message an object: {"role": ..., "content": ...}',
    "message_missing_key": "give every message a `role` and a `content`",
    "message_unrecognized_key": "keep only role, content, name, weight, tool_calls and "
    "tool_call_id in messages (`tuneforge data clean` drops the rest)",
    "unrecognized_role": "use one of the roles system, user, assistant, tool",
    "missing_content": "give the message a non-null string `content`",
    "invalid_content_type": 'make `content` a string or a list of {"type": "text", "text": ...}',
    "unsupported_content_part": "keep only text parts: a language model trains on text",
    "empty_content": "write the message's text, or drop the example",
    "invalid_name_type": "make `name` a string, or remove it",
    "invalid_weight": "set `weight` to 0 (not trained) or 1 (trained), on assistant messages only",
    "invalid_tools": 'make `tools` a list of {"type": "function", "function": {"name": ...}}',
    "invalid_tool_calls": "make `tool_calls` a list of "
    '{"id": ..., "type": "function", "function": {"name": ..., "arguments": "<JSON>"}}',
    "invalid_tool_arguments": "write `arguments` as a JSON object encoded in a string",
    "unmatched_tool_call_id": "give each tool message the `tool_call_id` of an earlier "
    "assistant tool call",
    "unanswered_tool_call": "add a tool message answering the call, or drop the call",
    "example_missing_assistant_message": "add at least one assistant message: it is what the "
    "model learns to write",
    "no_trained_message": "set `weight` to 1 on at least one assistant message",
    "consecutive_same_role": "merge consecutive messages of the same role, or check the order",
    "system_not_first": "put the system message first: most chat templates require it",
    "last_message_not_assistant": "end with the assistant reply: later messages are not learned",
    "unrecognized_key": "training ignores this key; check it is not a misspelt one "
    "(`tuneforge data clean` keeps it, as metadata)",
    "missing_prompt": "give the example a string `prompt` (it may be empty)",
    "missing_completion": "give the example a non-empty string `completion`",
    "invalid_prompt_type": "make `prompt` a string",
    "invalid_completion_type": "make `completion` a string",
    "empty_completion": "write the completion, or drop the example",
    "missing_text": "give the example a non-empty string `text`",
    "invalid_text_type": "make `text` a string",
    "empty_text": "drop the example, or write its text",
    "missing_input": 'give the example an `input` object: {"messages": [...]}',
    "invalid_input": 'make `input` an object holding the prompt messages: {"messages": [...]}',
    "missing_preference_output": "give both `preferred_output` and `non_preferred_output`",
    "invalid_preference_output": "make each output a list holding exactly one assistant message",
    "identical_preference": "make the preferred and non-preferred outputs differ, or drop the "
    "example: it teaches nothing",
    "too_few_examples": f"add examples: training needs at least {MIN_EXAMPLES}",
    "few_examples": f"add examples: fine-tunes usually improve from {RECOMMENDED_EXAMPLES} to "
    "a few hundred examples on",
    "duplicate_example": "remove duplicates (`tuneforge data clean` does)",
    "too_long": "shorten the example, or drop it (`tuneforge data clean --max-tokens N`); "
    "training truncates or drops it as configured",
    "tokenize_failed": "fix the example so the model's chat template can render it",
    "no_prompt_separator": 'end every prompt with the same separator (e.g. "\\n\\n###\\n\\n") '
    "that appears nowhere else, and end prompts with it at inference too",
    "separator_in_prompt": "choose a separator that appears only at the end of prompts",
    "common_prompt_prefix": "drop the shared prefix unless it is needed: a fine-tune learns "
    "the task from the examples, it needs no instructions",
    "completion_no_leading_space": "start each completion with a space: most tokenizers "
    "encode words with their leading space",
    "no_stop_sequence": 'end every completion with the same stop sequence (e.g. "\\n" or '
    '" END") and pass it as `stop` at inference',
    "common_completion_prefix": "drop the prefix every completion starts with, or move it to "
    "the end of the prompts",
}
WARNINGS = frozenset(
    {
        "unanswered_tool_call",
        "consecutive_same_role",
        "system_not_first",
        "last_message_not_assistant",
        "unrecognized_key",
        "invalid_tool_arguments",
        "identical_preference",
        "few_examples",
        "duplicate_example",
        "too_long",
        "no_prompt_separator",
        "separator_in_prompt",
        "common_prompt_prefix",
        "completion_no_leading_space",
        "no_stop_sequence",
        "common_completion_prefix",
    }
)

# File-wide errors that cleaning cannot fix: the verdict names them instead of suggesting it.
UNCLEANABLE = ("binary_file", "utf16", "empty_file", "missing_columns", "unknown_format")

MISSING: Any = object()


def problem(
    code: str, message: str, line: int | None = None, severity: Severity | None = None
) -> Problem:
    """A `Problem` of a known `code`, with its standard fix and default severity."""
    if severity is None:
        severity = "warning" if code in WARNINGS else "error"
    return Problem(code=code, message=message, fix=FIXES[code], line=line, severity=severity)


def show(value: Any, width: int = 40) -> str:
    """A short, safe rendering of a user value for a message."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def kind_of(value: Any) -> str:
    """The JSON name of a value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def looks_like(obj: dict, expected: Format) -> str:
    """ " (this line looks like X data)" when the example matches another format."""
    other = detect_format(obj)
    return f" (this line looks like {other} data)" if other not in (None, expected) else ""


def preference_output(obj: dict, side: str) -> tuple[str, Any]:
    """(key used, value) of one side: `side`_output, or the `side`_completion alias."""
    key = f"{side}_output"
    if key in obj:
        return key, obj[key]
    alias = f"{side}_completion"
    return (alias, obj[alias]) if alias in obj else (key, MISSING)
