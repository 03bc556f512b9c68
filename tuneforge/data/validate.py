"""Validating datasets: every problem with its line number, a category and a one-line fix.

`validate_example` checks one parsed example against its format (OpenAI chat, prompt-completion,
preference or text) and is what the cleaner and the upload API reuse; `is_valid_example` answers
the same question with a yes or no. `validate` runs them over a whole `LoadedDataset` and adds the
checks that need the whole file: too few examples, exact duplicates, examples longer than the
model's context, and the prompt / completion conventions of OpenAI's legacy `prepare_data` tool.
`validate_streamed` runs the same checks over a `StreamedDataset` in bounded memory (uploads).

Severity: an "error" makes the file unfit for training. OpenAI rejects a whole file for one bad
line and TuneForge keeps the same rule, so a file is either fit or not; `tuneforge data clean`
fixes or drops the bad lines. A "warning" is suspicious, or advice, and never stops training.
`Report.ok` is True exactly when there is no error.

The per-example checks are plain dict and type tests (no schema library) with a fast path for
plain messages: reading and checking typical chat data runs at about 90,000 examples a second on
one core.

Example:
    >>> report = validate(read_dataset("train.jsonl"))
    >>> report.ok, report.counts_by_code
    (False, {'missing_content': 2, 'duplicate_example': 1})
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tuneforge.data.io import (
    Format,
    LoadedDataset,
    Problem,
    Record,
    Severity,
    StreamedDataset,
    detect_format,
    parse_format,
    paused_gc,
)

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
_NO_LIMIT = 10_000_000

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
_UNCLEANABLE = ("binary_file", "utf16", "empty_file", "missing_columns", "unknown_format")

_MISSING: Any = object()


def problem(
    code: str, message: str, line: int | None = None, severity: Severity | None = None
) -> Problem:
    """A `Problem` of a known `code`, with its standard fix and default severity."""
    if severity is None:
        severity = "warning" if code in WARNINGS else "error"
    return Problem(code=code, message=message, fix=FIXES[code], line=line, severity=severity)


def _show(value: Any, width: int = 40) -> str:
    """A short, safe rendering of a user value for a message."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _kind(value: Any) -> str:
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


def _looks_like(obj: dict, expected: Format) -> str:
    """ " (this line looks like X data)" when the example matches another format."""
    other = detect_format(obj)
    return f" (this line looks like {other} data)" if other not in (None, expected) else ""


# --- chat -----------------------------------------------------------------------------------

# Bits of the roles seen in a conversation, for the dataset summary.
_HAS_SYSTEM = 1
_HAS_USER = 2


def _check_tools(tools: Any, where: str, line: int | None, out: list[Problem]) -> None:
    if type(tools) is not list:
        out.append(problem("invalid_tools", f"`{where}` is {_kind(tools)}, not a list", line))
        return
    for k, tool in enumerate(tools):
        fn = tool.get("function") if type(tool) is dict else None
        if type(fn) is not dict or type(fn.get("name")) is not str or not fn["name"]:
            out.append(
                problem(
                    "invalid_tools",
                    f"`{where}[{k}]` is not a function tool with a name: {_show(tool)}",
                    line,
                )
            )
        elif "parameters" in fn and type(fn["parameters"]) is not dict:
            out.append(
                problem(
                    "invalid_tools", f"`{where}[{k}].function.parameters` is not an object", line
                )
            )


def _check_tool_calls(
    calls: Any, where: str, index: int, line: int | None, out: list[Problem], pending: dict
) -> None:
    if type(calls) is not list:
        out.append(
            problem(
                "invalid_tool_calls", f"`{where}.tool_calls` is {_kind(calls)}, not a list", line
            )
        )
        return
    for k, call in enumerate(calls):
        fn = call.get("function") if type(call) is dict else None
        name = fn.get("name") if type(fn) is dict else None
        if type(name) is not str or not name:
            out.append(
                problem(
                    "invalid_tool_calls",
                    f"`{where}.tool_calls[{k}]` has no function name: {_show(call)}",
                    line,
                )
            )
            continue
        call_id = call.get("id")
        if call_id is not None and type(call_id) is not str:
            out.append(
                problem("invalid_tool_calls", f"`{where}.tool_calls[{k}].id` is not a string", line)
            )
        elif call_id is not None:
            pending[call_id] = index
        arguments = fn.get("arguments")
        if type(arguments) is str:
            try:
                json.loads(arguments)
            except (ValueError, RecursionError):
                out.append(
                    problem(
                        "invalid_tool_arguments",
                        f"`{where}.tool_calls[{k}].function.arguments` is not valid JSON: "
                        f"{_show(arguments)}",
                        line,
                    )
                )
        elif arguments is not None and type(arguments) is not dict:
            out.append(
                problem(
                    "invalid_tool_calls",
                    f"`{where}.tool_calls[{k}].function.arguments` is {_kind(arguments)}, "
                    "not a JSON string",
                    line,
                )
            )


def _check_parts(parts: list, where: str, line: int | None, out: list[Problem]) -> bool:
    """Check a list of content parts; True when the parts hold some non-blank text."""
    text = False
    for k, part in enumerate(parts):
        kind = part.get("type") if type(part) is dict else None
        if kind == "text" and type(part.get("text")) is str:
            if part["text"] and not part["text"].isspace():
                text = True
        elif kind is not None and kind != "text":
            out.append(
                problem(
                    "unsupported_content_part",
                    f"`{where}.content[{k}]` is a {_show(kind)} part, not text",
                    line,
                )
            )
        else:
            out.append(
                problem(
                    "invalid_content_type",
                    f'`{where}.content[{k}]` is not a {{"type": "text", "text": ...}} part: '
                    f"{_show(part)}",
                    line,
                )
            )
    return text


def _check_messages(
    messages: list,
    where: str,
    line: int | None,
    out: list[Problem],
    *,
    need_assistant: bool,
) -> int:
    """Check a list of OpenAI chat messages; returns the `_HAS_*` bits of the roles seen.

    `need_assistant`: a training conversation must hold an assistant message that is trained
    (weight not 0); a preference prompt need not.
    """
    seen = 0
    prev_role = None
    assistants = trained = 0
    pending: dict[str, int] = {}  # tool call id -> index of the assistant message that made it
    last = len(messages) - 1
    for i, m in enumerate(messages):
        # Fast path: a plain {"role", "content"} message with text, as most messages are.
        if type(m) is dict and len(m) == 2:
            role = m.get("role")
            content = m.get("content")
            if type(content) is str and content and not content.isspace() and prev_role != role:
                if role == "user":
                    seen |= _HAS_USER
                    prev_role = role
                    continue
                if role == "assistant":
                    assistants += 1
                    trained += 1
                    prev_role = role
                    continue
                if role == "system" and not i:
                    seen |= _HAS_SYSTEM
                    prev_role = role
                    continue
        at = f"{where}[{i}]"
        if type(m) is not dict:
            out.append(problem("message_not_object", f"`{at}` is {_kind(m)}, not an object", line))
            prev_role = None
            continue
        role = m.get("role")
        if not MESSAGE_KEYS.issuperset(m):
            extra = [k for k in m if k not in MESSAGE_KEYS]
            out.append(
                problem(
                    "message_unrecognized_key",
                    f"`{at}` has unrecognized key(s) {', '.join(_show(k) for k in extra[:5])}",
                    line,
                )
            )
        if role is None:
            out.append(problem("message_missing_key", f"`{at}` has no `role`", line))
        elif type(role) is not str or role not in ROLES:
            hint = ": use `tool` with a `tool_call_id`" if role == "function" else ""
            out.append(problem("unrecognized_role", f"`{at}` has role {_show(role)}{hint}", line))
        calls = m.get("tool_calls")
        content = m.get("content", _MISSING)
        if type(content) is str:
            if not content or content.isspace():
                # An empty reply is what the model would learn; empty context is only noise.
                is_target = role == "assistant" and not calls and m.get("weight", 1) != 0
                out.append(
                    problem(
                        "empty_content",
                        f"`{at}` ({_show(role)}) has {'empty' if not content else 'blank'} content",
                        line,
                        "error" if is_target else "warning",
                    )
                )
        elif content is _MISSING or content is None:
            if not (role == "assistant" and calls):
                if content is _MISSING:
                    out.append(problem("message_missing_key", f"`{at}` has no `content`", line))
                else:
                    out.append(problem("missing_content", f"`{at}` has null content", line))
        elif type(content) is list:
            if not _check_parts(content, at, line, out) and not calls:
                is_target = role == "assistant" and m.get("weight", 1) != 0
                out.append(
                    problem(
                        "empty_content",
                        f"`{at}` ({_show(role)}) has no text in its content parts",
                        line,
                        "error" if is_target else "warning",
                    )
                )
        else:
            out.append(
                problem(
                    "invalid_content_type",
                    f"`{at}.content` is {_kind(content)}, not a string or a list of parts",
                    line,
                )
            )
        if "name" in m and type(m["name"]) is not str:
            out.append(problem("invalid_name_type", f"`{at}.name` is {_kind(m['name'])}", line))

        if role == "assistant":
            assistants += 1
            weight = m.get("weight", 1)
            if type(weight) not in (int, float) or weight not in (0, 1):
                out.append(
                    problem("invalid_weight", f"`{at}.weight` is {_show(weight)}, not 0 or 1", line)
                )
                trained += 1  # reported once, as a bad weight, not again as nothing trained
            elif weight:
                trained += 1
            if calls is not None:
                _check_tool_calls(calls, at, i, line, out, pending)
        else:
            if "weight" in m:
                out.append(
                    problem(
                        "invalid_weight",
                        f"`{at}` ({_show(role)}) has a `weight`, which only assistant messages "
                        "take; it is ignored",
                        line,
                        "warning",
                    )
                )
            if calls is not None:
                out.append(
                    problem(
                        "invalid_tool_calls",
                        f"`{at}` ({_show(role)}) has `tool_calls`: only assistants call tools",
                        line,
                    )
                )
        if role == "tool":
            call_id = m.get("tool_call_id", _MISSING)
            if call_id is _MISSING:
                out.append(problem("message_missing_key", f"`{at}` has no `tool_call_id`", line))
            elif type(call_id) is not str or call_id not in pending:
                out.append(
                    problem(
                        "unmatched_tool_call_id",
                        f"`{at}.tool_call_id` {_show(call_id)} answers no earlier tool call",
                        line,
                    )
                )
            else:
                del pending[call_id]
        elif "tool_call_id" in m:
            out.append(
                problem(
                    "message_unrecognized_key",
                    f"`{at}` ({_show(role)}) has a `tool_call_id`: only tool messages do",
                    line,
                )
            )
        elif role == "system":
            seen |= _HAS_SYSTEM
            if i and prev_role != "system":
                out.append(
                    problem("system_not_first", f"`{at}` is a system message after others", line)
                )
        elif role == "user":
            seen |= _HAS_USER

        if role == prev_role and role != "tool" and role is not None:
            out.append(
                problem(
                    "consecutive_same_role", f"`{at}` is a second {role} message in a row", line
                )
            )
        prev_role = role

    if pending:
        for call_id, index in pending.items():
            if index != last:  # a conversation may end on a call: it teaches when to call
                out.append(
                    problem(
                        "unanswered_tool_call",
                        f"tool call {_show(call_id)} in `{where}[{index}]` is never answered",
                        line,
                    )
                )
    if need_assistant:
        if not assistants:
            out.append(problem("example_missing_assistant_message", "no assistant message", line))
        elif not trained:
            out.append(problem("no_trained_message", "every assistant message has weight 0", line))
        elif prev_role != "assistant" and type(messages[last]) is dict:
            out.append(
                problem(
                    "last_message_not_assistant",
                    f"the conversation ends with a {_show(prev_role)} message",
                    line,
                )
            )
    return seen


def _check_chat(obj: dict, line: int | None, out: list[Problem]) -> int:
    messages = obj.get("messages", _MISSING)
    if type(messages) is not list or not messages:
        if messages is _MISSING or messages is None:
            out.append(
                problem(
                    "missing_messages_list",
                    f"no `messages` list{_looks_like(obj, Format.CHAT)}",
                    line,
                )
            )
        elif type(messages) is list:
            out.append(problem("missing_messages_list", "`messages` is empty", line))
        else:
            out.append(
                problem(
                    "invalid_messages_type", f"`messages` is {_kind(messages)}, not a list", line
                )
            )
        return 0
    if len(obj) > 1:
        if "tools" in obj and obj["tools"] is not None:
            _check_tools(obj["tools"], "tools", line, out)
        if not CHAT_KEYS.issuperset(obj):
            _unrecognized_keys(obj, CHAT_KEYS, line, out)
    return _check_messages(messages, "messages", line, out, need_assistant=True)


def _unrecognized_keys(obj: dict, known: frozenset, line: int | None, out: list[Problem]) -> None:
    extra = [k for k in obj if k not in known]
    out.append(
        problem(
            "unrecognized_key",
            f"key(s) {', '.join(_show(k) for k in extra[:5])} are not read and will be ignored",
            line,
        )
    )


# --- preference -----------------------------------------------------------------------------


def _preference_output(obj: dict, side: str) -> tuple[str, Any]:
    """(key used, value) of one side: `side`_output, or the `side`_completion alias."""
    key = f"{side}_output"
    if key in obj:
        return key, obj[key]
    alias = f"{side}_completion"
    return (alias, obj[alias]) if alias in obj else (key, _MISSING)


def _check_preference(obj: dict, line: int | None, out: list[Problem]) -> int:
    seen = 0
    inp = obj.get("input", _MISSING)
    if inp is _MISSING or inp is None:
        out.append(
            problem("missing_input", f"no `input`{_looks_like(obj, Format.PREFERENCE)}", line)
        )
    elif type(inp) is not dict:
        out.append(problem("invalid_input", f"`input` is {_kind(inp)}, not an object", line))
    else:
        messages = inp.get("messages")
        if type(messages) is not list or not messages:
            out.append(problem("invalid_input", "`input.messages` is not a non-empty list", line))
        else:
            seen = _check_messages(messages, "input.messages", line, out, need_assistant=False)
        if inp.get("tools") is not None:
            _check_tools(inp["tools"], "input.tools", line, out)
        if not INPUT_KEYS.issuperset(inp):
            _unrecognized_keys(inp, INPUT_KEYS, line, out)
    outputs = []
    for side in ("preferred", "non_preferred"):
        key, value = _preference_output(obj, side)
        if value is _MISSING or value is None:
            out.append(problem("missing_preference_output", f"no `{key}`", line))
            continue
        if type(value) is str and key.endswith("_completion"):
            value = [{"role": "assistant", "content": value}]
        if type(value) is not list:
            out.append(
                problem("invalid_preference_output", f"`{key}` is {_kind(value)}, not a list", line)
            )
            continue
        first = value[0] if len(value) == 1 else None
        if type(first) is not dict or first.get("role") != "assistant":
            out.append(
                problem(
                    "invalid_preference_output",
                    f"`{key}` must hold exactly one assistant message, got {_show(value)}",
                    line,
                )
            )
            continue
        found = len(out)
        _check_messages(value, key, line, out, need_assistant=False)
        if not any(p.severity == "error" for p in out[found:]):
            outputs.append(first)
    if len(outputs) == 2 and outputs[0] == outputs[1]:
        out.append(
            problem(
                "identical_preference",
                "the preferred and non-preferred outputs are identical",
                line,
            )
        )
    if not PREFERENCE_KEYS.issuperset(obj):
        _unrecognized_keys(obj, PREFERENCE_KEYS, line, out)
    return seen


# --- prompt-completion and text -------------------------------------------------------------


def _check_prompt_completion(obj: dict, line: int | None, out: list[Problem]) -> int:
    prompt = obj.get("prompt", _MISSING)
    if prompt is _MISSING or prompt is None:
        out.append(
            problem(
                "missing_prompt", f"no `prompt`{_looks_like(obj, Format.PROMPT_COMPLETION)}", line
            )
        )
    elif type(prompt) is not str:
        out.append(
            problem("invalid_prompt_type", f"`prompt` is {_kind(prompt)}, not a string", line)
        )
    completion = obj.get("completion", _MISSING)
    if completion is _MISSING or completion is None:
        out.append(problem("missing_completion", "no `completion`", line))
    elif type(completion) is not str:
        out.append(
            problem(
                "invalid_completion_type",
                f"`completion` is {_kind(completion)}, not a string",
                line,
            )
        )
    elif not completion or completion.isspace():
        out.append(problem("empty_completion", f"the completion is {_show(completion)}", line))
    if len(obj) > 2 and not PROMPT_COMPLETION_KEYS.issuperset(obj):
        _unrecognized_keys(obj, PROMPT_COMPLETION_KEYS, line, out)
    return 0


def _check_text(obj: dict, line: int | None, out: list[Problem]) -> int:
    text = obj.get("text", _MISSING)
    if text is _MISSING or text is None:
        out.append(problem("missing_text", f"no `text`{_looks_like(obj, Format.TEXT)}", line))
    elif type(text) is not str:
        out.append(problem("invalid_text_type", f"`text` is {_kind(text)}, not a string", line))
    elif not text or text.isspace():
        out.append(problem("empty_text", "the text is empty", line))
    if len(obj) > 1 and not TEXT_KEYS.issuperset(obj):
        _unrecognized_keys(obj, TEXT_KEYS, line, out)
    return 0


_Checker = Callable[[dict, "int | None", list[Problem]], int]
CHECKERS: dict[Format, _Checker] = {
    Format.CHAT: _check_chat,
    Format.PREFERENCE: _check_preference,
    Format.PROMPT_COMPLETION: _check_prompt_completion,
    Format.TEXT: _check_text,
}


def _checker(fmt: Format | str) -> _Checker:
    # A str-valued Enum hashes and compares like its value: "chat" finds Format.CHAT directly.
    check = CHECKERS.get(fmt)  # type: ignore[call-overload]
    return check if check is not None else CHECKERS[parse_format(fmt)]


def validate_example(obj: Any, fmt: Format | str, line: int | None = None) -> list[Problem]:
    """Every problem of one parsed example in format `fmt`; an empty list when it is clean.

    Checks shape and types only, never the dataset as a whole (duplicates, counts, token
    lengths: see `validate`). Problems carry `line`.

    Example:
        >>> [p.code for p in validate_example({"messages": []}, "chat", line=3)]
        ['missing_messages_list']
    """
    out: list[Problem] = []
    if type(obj) is not dict:
        out.append(problem("data_type", f"the example is {_kind(obj)}, not a JSON object", line))
        return out
    _checker(fmt)(obj, line, out)
    return out


def is_valid_example(obj: Any, fmt: Format | str) -> bool:
    """True when `obj` has no error-severity problem as a `fmt` example (warnings allowed)."""
    if type(obj) is not dict:
        return False
    out: list[Problem] = []
    _checker(fmt)(obj, None, out)
    return not out or all(p.severity != "error" for p in out)


# --- the whole dataset ----------------------------------------------------------------------


@dataclass
class TokenStats:
    """Token lengths of the valid examples, exact (a tokenizer) or estimated (characters / 4)."""

    exact: bool
    count: int
    total: int
    min: int
    mean: float
    p50: int
    p95: int
    max: int
    limit: int | None
    over_limit: int

    def to_dict(self) -> dict[str, Any]:
        """The statistics as a JSON-ready dict."""
        return {
            "exact": self.exact,
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "mean": round(self.mean, 1),
            "p50": self.p50,
            "p95": self.p95,
            "max": self.max,
            "limit": self.limit,
            "over_limit": self.over_limit,
        }


@dataclass
class Report:
    """The result of checking one dataset.

    `problems` are ordered: file-wide ones first, then by line. `examples_read` counts records
    (blank lines excluded); `examples_valid` those with no error. `ok` is True when training
    would accept the file: no error-severity problem at all.
    """

    path: str
    format: Format | None
    unit: str
    examples_read: int
    examples_valid: int
    problems: list[Problem]
    stats: dict[str, Any] = field(default_factory=dict)
    tokens: TokenStats | None = None
    # (code, severity) -> count of every problem, when `problems` is only a sample
    # (`validate_streamed`).
    problem_counts: Counter[tuple[str, str]] | None = None

    def _counts(self) -> Counter[tuple[str, str]]:
        if self.problem_counts is not None:
            return self.problem_counts
        return Counter((p.code, p.severity) for p in self.problems)

    @property
    def counts_by_code(self) -> dict[str, int]:
        """How many problems of each code, most frequent first."""
        counts: Counter[str] = Counter()
        for (code, _), n in self._counts().items():
            counts[code] += n
        return dict(counts.most_common())

    @property
    def counts_by_severity(self) -> dict[str, int]:
        """How many errors and warnings."""
        counts: Counter[str] = Counter()
        for (_, severity), n in self._counts().items():
            counts[severity] += n
        return {"error": counts["error"], "warning": counts["warning"]}

    @property
    def errors(self) -> list[Problem]:
        """The error-severity problems."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        """True when there is no error: training would not fail on this file."""
        return all(p.severity != "error" for p in self.problems)

    def listed(self, limit: int | None = None) -> list[Problem]:
        """The problems to show: errors before warnings, each in line order; `limit` at most."""
        ordered = [p for p in self.problems if p.severity == "error"]
        ordered += [p for p in self.problems if p.severity != "error"]
        return ordered if not limit else ordered[:limit]

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        """The report as a JSON-ready dict; `limit` caps how many problems are listed."""
        shown = self.listed(limit)
        return {
            "path": self.path,
            "format": None if self.format is None else self.format.value,
            "unit": self.unit,
            "ok": self.ok,
            "examples_read": self.examples_read,
            "examples_valid": self.examples_valid,
            "counts_by_severity": self.counts_by_severity,
            "counts_by_code": self.counts_by_code,
            "stats": self.stats,
            "tokens": None if self.tokens is None else self.tokens.to_dict(),
            "problems_total": sum(self._counts().values()),
            "problems": [p.to_dict() for p in shown],
        }


def validate(
    loaded: LoadedDataset,
    *,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> Report:
    """Check every example of `loaded` and the dataset as a whole.

    Args:
        loaded: what `read_dataset` returned; its reading problems are part of the report.
        tokenizer: a Hugging Face tokenizer (with a chat template for chat data); when given,
            each valid example is tokenized exactly as training does and its length checked.
        max_tokens: the context length to check against; defaults to the tokenizer's
            `model_max_length`. Without a tokenizer, lengths are estimated from characters.
        min_examples: fewer valid examples than this is an error.

    Example:
        >>> report = validate(read_dataset("train.jsonl"), max_tokens=2048)
        >>> report.ok
        True
    """
    with paused_gc():
        return _validate(loaded, tokenizer, max_tokens, min_examples)


@dataclass
class _Counts:
    """What one pass over the records counts (the report's numbers)."""

    records: int = 0
    read: int = 0  # blank lines are records, not examples read
    valid: int = 0
    no_system: int = 0
    no_user: int = 0


def _checked(
    records: Iterable[Record],
    check: _Checker | None,
    add: Callable[[Problem], None],
    counts: _Counts,
) -> Iterator[Record]:
    """Check each record, `add` every problem, and yield the records with no error."""
    for record in records:
        counts.records += 1
        found = record.problem
        if found is not None:
            add(found)
            if found.code != "blank_line":
                counts.read += 1
            continue
        counts.read += 1
        obj, line = record.data, record.line
        if type(obj) is not dict:
            add(problem("data_type", f"the example is {_kind(obj)}, not a JSON object", line))
            continue
        if check is None:
            continue
        out: list[Problem] = []
        seen = check(obj, line, out)
        if out:
            for p in out:
                add(p)
            if any(p.severity == "error" for p in out):
                continue
        counts.valid += 1
        if not seen & _HAS_SYSTEM:
            counts.no_system += 1
        if not seen & _HAS_USER:
            counts.no_user += 1
        yield record


def duplicate_key(raw: str) -> bytes:
    """What makes two examples exact duplicates: their stripped line, as a 16-byte hash (a
    checker keeps one hash per example, never the lines)."""
    return hashlib.blake2b(raw.strip().encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _too_few(valid: int, min_examples: int) -> Problem | None:
    if valid < min_examples:
        return problem(
            "too_few_examples",
            f"{valid} valid example(s); training needs at least {min_examples}",
        )
    if valid < RECOMMENDED_EXAMPLES:
        return problem("few_examples", f"only {valid} valid examples")
    return None


def _validate(
    loaded: LoadedDataset, tokenizer: Any, max_tokens: int | None, min_examples: int
) -> Report:
    fmt = loaded.format
    problems: list[Problem] = list(loaded.file_problems)
    counts = _Counts()
    valid_examples: list[tuple[int, dict]] = []
    first_seen: dict[bytes, int] = {}
    check = CHECKERS.get(fmt) if fmt is not None else None  # type: ignore[arg-type]
    if check is None and any(r.problem is None and type(r.data) is dict for r in loaded.records):
        problems.append(
            problem("unknown_format", "no example matches a known format, so none was checked")
        )
    add = problems.append
    for record in _checked(loaded.records, check, add, counts):
        line = record.line
        valid_examples.append((line, record.data))
        first = first_seen.setdefault(duplicate_key(record.raw), line)
        if first != line:
            add(problem("duplicate_example", f"the same example as line {first}", line))
    valid = counts.valid

    stats: dict[str, Any] = {}
    if fmt in (Format.CHAT, Format.PREFERENCE):
        stats["examples_without_system"] = counts.no_system
        stats["examples_without_user"] = counts.no_user
    stats["duplicates"] = valid - len(first_seen)

    if fmt is Format.PROMPT_COMPLETION and len(valid_examples) >= 2:
        problems += _prompt_completion_advice([obj for _, obj in valid_examples])
    tokens = None
    if tokenizer is not None or max_tokens is not None:
        tokens, failed = _token_lengths(valid_examples, fmt, tokenizer, max_tokens, problems)
        valid -= failed

    if loaded.records or not any(p.code == "empty_file" for p in problems):
        few = _too_few(valid, min_examples)
        if few is not None:
            problems.append(few)

    problems.sort(key=lambda p: (p.line is not None, p.line or 0))
    return Report(
        path=str(loaded.path),
        format=fmt,
        unit=loaded.unit,
        examples_read=counts.read,
        examples_valid=valid,
        problems=problems,
        stats=stats,
        tokens=tokens,
    )


# --- bounded memory (server uploads) ---------------------------------------------------------


class _ProblemSample:
    """Counts of every problem, and the first `keep` errors and warnings by line.

    File-wide problems (no line) sort first, as in `Report.problems`.
    """

    def __init__(self, keep: int):
        self.keep = keep
        self.counts: Counter[tuple[str, str]] = Counter()
        self.kept: dict[str, list[Problem]] = {"error": [], "warning": []}

    def add(self, p: Problem) -> None:
        self.counts[p.code, p.severity] += 1
        kept = self.kept[p.severity]
        kept.append(p)
        if len(kept) > 2 * self.keep:  # trim now and then: amortized O(1) per problem
            kept.sort(key=_problem_order)
            del kept[self.keep :]

    def problems(self) -> list[Problem]:
        out = []
        for kept in self.kept.values():
            kept.sort(key=_problem_order)
            out += kept[: self.keep]
        return sorted(out, key=_problem_order)


def _problem_order(p: Problem) -> tuple[bool, int]:
    return (p.line is not None, p.line or 0)


# `_Duplicates` keeps this many examples' hashes in memory (24 MiB), then spills them to disk.
DUPLICATES_IN_MEMORY = 1 << 20
_BUCKETS = 16  # spilled hashes are split by their top bits: one bucket is sorted at a time
_ENTRY = [("high", "<u8"), ("low", "<u8"), ("line", "<u8")]


class _Duplicates:
    """Exact duplicates from one 16-byte hash and a line number per example (24 bytes, in a
    flat array): no line and no per-example Python object is kept. Past `in_memory`
    examples the entries go to temporary bucket files, so memory stays bounded by one
    bucket however many lines the file has."""

    def __init__(self, in_memory: int | None = None) -> None:
        self.in_memory = DUPLICATES_IN_MEMORY if in_memory is None else in_memory
        self.entries = array("Q")  # high, low, line, high, low, line, ...
        self.count = 0
        self._spill_dir: str | None = None

    def add(self, raw: str, line: int) -> None:
        key = duplicate_key(raw)
        self.entries.extend(
            (int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"), line)
        )
        self.count += 1
        if len(self.entries) >= 3 * self.in_memory:
            self._spill()

    def _spill(self) -> None:
        import tempfile

        import numpy as np

        if self._spill_dir is None:
            self._spill_dir = tempfile.mkdtemp(prefix="tuneforge-duplicates-")
        entries = np.frombuffer(self.entries, dtype=_ENTRY)
        bucket = entries["high"] >> np.uint64(64 - 4)
        for b in range(_BUCKETS):
            with open(os.path.join(self._spill_dir, str(b)), "ab") as f:
                f.write(entries[bucket == b].tobytes())
        del entries, bucket
        self.entries = array("Q")

    def found(self) -> Iterator[tuple[int, int]]:
        """(line, line of its first copy) of every duplicate; in line order within a bucket."""
        import numpy as np

        if self._spill_dir is None:
            yield from _duplicates_in(np.frombuffer(self.entries, dtype=_ENTRY))
            return
        self._spill()
        try:
            for b in range(_BUCKETS):
                path = os.path.join(self._spill_dir, str(b))
                if os.path.exists(path):
                    yield from _duplicates_in(np.fromfile(path, dtype=_ENTRY))
        finally:
            shutil.rmtree(self._spill_dir, ignore_errors=True)


def _duplicates_in(entries: Any) -> Iterator[tuple[int, int]]:
    import numpy as np

    if len(entries) < 2:
        return
    order = np.lexsort((entries["line"], entries["low"], entries["high"]))  # by hash, then line
    e = entries[order]
    same = np.zeros(len(e), dtype=bool)
    same[1:] = (e["high"][1:] == e["high"][:-1]) & (e["low"][1:] == e["low"][:-1])
    # The first line of each run of equal hashes, carried along the run.
    starts = np.where(~same, np.arange(len(e)), 0)
    np.maximum.accumulate(starts, out=starts)
    dup_lines, first_lines = e["line"][same], e["line"][starts[same]]
    by_line = np.argsort(dup_lines, kind="stable")
    for i in by_line.tolist():
        yield int(dup_lines[i]), int(first_lines[i])


def validate_streamed(
    streamed: StreamedDataset, *, min_examples: int = MIN_EXAMPLES, keep: int = 50
) -> Report:
    """`validate` for files of any size, in memory bounded by one example and `keep`.

    The same checks, codes, messages and line numbers as `validate` (without token lengths),
    over `streamed.records()` read one at a time; the report lists the first `keep` errors
    and warnings, while its counts (`problem_counts`) cover every problem. Duplicates are
    found from hashes; prompt-completion advice needs a second pass over the file.

    Example:
        >>> report = validate_streamed(stream_dataset("big.jsonl"))
        >>> report.ok, report.counts_by_code
        (True, {'duplicate_example': 3})
    """
    with paused_gc():
        return _validate_streamed(streamed, min_examples, keep)


def _validate_streamed(streamed: StreamedDataset, min_examples: int, keep: int) -> Report:
    fmt = streamed.format
    sample = _ProblemSample(keep)
    for p in streamed.file_problems:
        sample.add(p)
    counts = _Counts()
    duplicates = _Duplicates()
    advice = _PromptCompletionAdvice() if fmt is Format.PROMPT_COMPLETION else None
    check = CHECKERS.get(fmt) if fmt is not None else None  # type: ignore[arg-type]
    records = streamed.records()
    saw_object: list[bool] = []
    if check is None:
        records = _noting_objects(records, saw_object)
    for record in _checked(records, check, sample.add, counts):
        duplicates.add(record.raw, record.line)
        if advice is not None:
            advice.add(record.data)
    if saw_object:
        sample.add(
            problem("unknown_format", "no example matches a known format, so none was checked")
        )
    unique = duplicates.count
    for line, first in duplicates.found():
        unique -= 1
        sample.add(problem("duplicate_example", f"the same example as line {first}", line))
    stats: dict[str, Any] = {}
    if fmt in (Format.CHAT, Format.PREFERENCE):
        stats["examples_without_system"] = counts.no_system
        stats["examples_without_user"] = counts.no_user
    stats["duplicates"] = counts.valid - unique
    if advice is not None and counts.valid >= 2:
        for p in advice.problems(_separator_inside(streamed, advice.prompt_suffix)):
            sample.add(p)
    if counts.records or not any(code == "empty_file" for code, _ in sample.counts):
        few = _too_few(counts.valid, min_examples)
        if few is not None:
            sample.add(few)
    return Report(
        path=str(streamed.path),
        format=fmt,
        unit=streamed.unit,
        examples_read=counts.read,
        examples_valid=counts.valid,
        problems=sample.problems(),
        stats=stats,
        problem_counts=sample.counts,
    )


def _noting_objects(records: Iterator[Record], seen: list[bool]) -> Iterator[Record]:
    """`records`, noting in `seen` whether one parsed to a JSON object."""
    for record in records:
        if not seen and record.problem is None and type(record.data) is dict:
            seen.append(True)
        yield record


def _separator_inside(streamed: StreamedDataset, suffix: str) -> int:
    """How many valid prompts hold `suffix` before their end (a second pass over the file)."""
    if not suffix:
        return 0
    check = CHECKERS[Format.PROMPT_COMPLETION]
    inside = 0
    for record in _checked(streamed.records(), check, lambda p: None, _Counts()):
        prompt = record.data["prompt"]
        inside += suffix in prompt[: -len(suffix)]
    return inside


# A shared prefix shorter than this (once stripped) is a coincidence, not boilerplate.
_MIN_XFIX = 2


class _PromptCompletionAdvice:
    """The conventions OpenAI's legacy `prepare_data` tool advised for prompt-completion data,
    gathered one example at a time: the common prefix of many texts is that of the least and
    the greatest of them, so only those (and their reversals, for suffixes) are kept."""

    def __init__(self) -> None:
        self.n = self.no_space = 0
        self.bounds: dict[str, list[str]] = {}

    def _note(self, name: str, text: str) -> None:
        bounds = self.bounds.get(name)
        if bounds is None:
            self.bounds[name] = [text, text]
        elif text < bounds[0]:
            bounds[0] = text
        elif text > bounds[1]:
            bounds[1] = text

    def add(self, example: dict) -> None:
        prompt, completion = example["prompt"], example["completion"]
        self.n += 1
        self.no_space += not completion[:1].isspace()
        self._note("prompt", prompt)
        self._note("prompt_reversed", prompt[::-1])
        self._note("completion", completion)
        self._note("completion_reversed", completion[::-1])

    def _prefix(self, name: str) -> str:
        return _common_prefix(self.bounds.get(name, []))

    @property
    def prompt_suffix(self) -> str:
        return self._prefix("prompt_reversed")[::-1]

    def problems(self, inside: int) -> list[Problem]:
        """The advice, given how many prompts hold the separator before their end."""
        out = []
        suffix = self.prompt_suffix
        if not suffix:
            out.append(
                problem("no_prompt_separator", "the prompts do not end with a common separator")
            )
        elif inside:
            out.append(
                problem(
                    "separator_in_prompt",
                    f"the separator {_show(suffix)} that ends every prompt also appears inside "
                    f"{inside} of them",
                )
            )
        prefix = self._prefix("prompt")
        if len(prefix.strip()) >= _MIN_XFIX:
            out.append(problem("common_prompt_prefix", f"every prompt starts with {_show(prefix)}"))
        if self.no_space:
            out.append(
                problem(
                    "completion_no_leading_space",
                    f"{self.no_space} of {self.n} completions do not start with a whitespace "
                    "character",
                )
            )
        if not self._prefix("completion_reversed"):
            out.append(
                problem(
                    "no_stop_sequence",
                    "the completions do not end with a common stop sequence (the tokenizer's "
                    "end-of-text token is added in training either way)",
                )
            )
        prefix = self._prefix("completion")
        if len(prefix.strip()) >= _MIN_XFIX:
            out.append(
                problem("common_completion_prefix", f"every completion starts with {_show(prefix)}")
            )
        return out


def _prompt_completion_advice(examples: list[dict]) -> list[Problem]:
    """`_PromptCompletionAdvice` over a list of valid prompt-completion examples."""
    advice = _PromptCompletionAdvice()
    for e in examples:
        advice.add(e)
    suffix = advice.prompt_suffix
    inside = sum(1 for e in examples if suffix in e["prompt"][: -len(suffix)]) if suffix else 0
    return advice.problems(inside)


def _common_prefix(texts: list[str]) -> str:
    """The longest string every text starts with ("" for no texts)."""
    if not texts:
        return ""
    low, high = min(texts), max(texts)  # the texts sorted between them share their prefix
    n = 0
    for a, b in zip(low, high, strict=False):
        if a != b:
            break
        n += 1
    return low[:n]


def _common_suffix(texts: list[str]) -> str:
    reversed_prefix = _common_prefix([t[::-1] for t in texts])
    return reversed_prefix[::-1]


def estimate_tokens(obj: dict, fmt: Format | None) -> int:
    """About how many tokens an example takes: its characters / 4, plus 4 per chat message."""
    chars = 0
    messages: list = []
    if fmt is Format.CHAT:
        messages = obj.get("messages") or []
    elif fmt is Format.PREFERENCE:
        inp = obj.get("input")
        messages = list(inp.get("messages") or []) if type(inp) is dict else []
        longest = 0
        for side in ("preferred", "non_preferred"):
            _, value = _preference_output(obj, side)
            if type(value) is str:
                longest = max(longest, len(value))
            elif type(value) is list:
                longest = max(longest, sum(len(_message_text(m)) for m in value))
        chars += longest
    elif fmt is Format.PROMPT_COMPLETION:
        chars = len(obj.get("prompt") or "") + len(obj.get("completion") or "")
    else:
        chars = len(obj.get("text") or "")
    for m in messages:
        chars += len(_message_text(m))
        calls = m.get("tool_calls") if type(m) is dict else None
        if calls:
            chars += len(json.dumps(calls, ensure_ascii=False))
    if fmt is Format.CHAT and obj.get("tools"):
        chars += len(json.dumps(obj["tools"], ensure_ascii=False))
    return math.ceil(chars / CHARS_PER_TOKEN) + 4 * len(messages) + 1


def _message_text(m: Any) -> str:
    if type(m) is not dict:
        return ""
    content = m.get("content")
    if type(content) is str:
        return content
    if type(content) is list:
        return "".join(p["text"] for p in content if type(p) is dict and type(p.get("text")) is str)
    return ""


def count_tokens(obj: dict, fmt: Format | None, tokenizer: Any) -> int:
    """The exact number of tokens training sees for one valid example.

    Chat, prompt-completion and text examples are encoded as training encodes them; a
    preference example counts its input messages followed by the longer of its two outputs.
    """
    from tuneforge.tokenize.encode import encode

    if fmt is Format.PREFERENCE:
        inp = obj["input"]
        longest = 0
        for side in ("preferred", "non_preferred"):
            _, value = _preference_output(obj, side)
            if type(value) is str:
                value = [{"role": "assistant", "content": value}]
            example = {"messages": [*inp["messages"], *value]}
            if inp.get("tools"):
                example["tools"] = inp["tools"]
            longest = max(longest, len(encode(example, tokenizer, format="chat")))
        return longest
    return len(encode(obj, tokenizer, format=None if fmt is None else fmt.value))


def _token_lengths(
    examples: list[tuple[int, dict]],
    fmt: Format | None,
    tokenizer: Any,
    max_tokens: int | None,
    problems: list[Problem],
) -> tuple[TokenStats | None, int]:
    """Token lengths of `examples` (problems added for over-long ones) and how many failed."""
    limit = max_tokens
    if limit is None and tokenizer is not None:
        model_max = getattr(tokenizer, "model_max_length", None)
        limit = model_max if isinstance(model_max, int) and 0 < model_max < _NO_LIMIT else None
    if tokenizer is not None:
        from tuneforge.tokenize.templates import ensure_chat_template

        if fmt in (Format.CHAT, Format.PREFERENCE):
            ensure_chat_template(tokenizer)
    lengths = []
    over = failed = 0
    for line, obj in examples:
        if tokenizer is None:
            n = estimate_tokens(obj, fmt)
        else:
            try:
                n = count_tokens(obj, fmt, tokenizer)
            except Exception as e:  # a template or tokenizer can raise anything on odd input
                problems.append(
                    problem("tokenize_failed", f"cannot be tokenized: {_show(str(e), 120)}", line)
                )
                failed += 1
                continue
        lengths.append(n)
        if limit is not None and n > limit:
            over += 1
            about = "" if tokenizer is not None else "about "
            problems.append(
                problem(
                    "too_long",
                    f"{about}{n} tokens, more than the limit of {limit}"
                    + ("" if tokenizer is not None else " (estimated: pass --model to count)"),
                    line,
                )
            )
    if not lengths:
        return None, failed
    ordered = sorted(lengths)
    stats = TokenStats(
        exact=tokenizer is not None,
        count=len(ordered),
        total=sum(ordered),
        min=ordered[0],
        mean=sum(ordered) / len(ordered),
        p50=ordered[len(ordered) // 2],
        p95=ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        max=ordered[-1],
        limit=limit,
        over_limit=over,
    )
    return stats, failed


# --- printing -------------------------------------------------------------------------------


def print_report(report: Report, console: Console, limit: int = 50) -> None:
    """Print `report` with Rich: each problem (line, code, message, fix), a summary table, the
    counts by code and a verdict line. `limit` caps the problems listed (0: all).
    """

    unit = {"element": "item", "row": "row"}.get(report.unit, "line")
    shown = report.listed(limit)
    if shown:
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
        table.add_column(unit, justify="right", no_wrap=True)
        table.add_column("code", no_wrap=True)
        table.add_column("problem and fix")
        for p in shown:
            colour = "red" if p.severity == "error" else "yellow"
            cell = Text(p.message)
            cell.append("\nfix: " + p.fix, style="dim")
            where = "file" if p.line is None else str(p.line)
            table.add_row(where, Text(p.code, style=colour), cell)
        console.print(table)
        if len(shown) < len(report.problems):
            console.print(
                f"[dim]… and {len(report.problems) - len(shown)} more problems "
                "(--limit 0 lists all, --json gives them all as JSON)[/dim]"
            )
        console.print()

    summary = Table(title="summary", box=None, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("file", escape(report.path))
    summary.add_row("format", str(report.format or "unknown"))
    summary.add_row("examples read", f"{report.examples_read:,}")
    summary.add_row("examples valid", f"{report.examples_valid:,}")
    severity = report.counts_by_severity
    summary.add_row("errors / warnings", f"{severity['error']:,} / {severity['warning']:,}")
    for key, value in report.stats.items():
        summary.add_row(key.replace("_", " "), f"{value:,}")
    tokens = report.tokens
    if tokens is not None:
        kind = "tokens" if tokens.exact else "tokens (estimated)"
        summary.add_row(
            kind,
            f"min {tokens.min:,}  mean {tokens.mean:,.0f}  p95 {tokens.p95:,}  max {tokens.max:,}"
            f"  total {tokens.total:,}",
        )
        if tokens.limit is not None:
            summary.add_row("over the limit", f"{tokens.over_limit:,} (limit {tokens.limit:,})")
    console.print(summary)

    if report.problems:
        by_code = Table(title="problems by code", box=None, title_justify="left")
        by_code.add_column("code")
        by_code.add_column("severity")
        by_code.add_column("count", justify="right")
        pairs: dict[tuple[str, str], int] = {}
        for p in report.problems:
            pairs[p.code, p.severity] = pairs.get((p.code, p.severity), 0) + 1
        for (code, sev), n in sorted(pairs.items(), key=lambda kv: (kv[0][1], -kv[1])):
            colour = "red" if sev == "error" else "yellow"
            by_code.add_row(Text(code, style=colour), sev, f"{n:,}")
        console.print(by_code)

    errors = severity["error"]
    if report.ok:
        note = f", {severity['warning']:,} warning(s) worth a look" if severity["warning"] else ""
        console.print(
            f"[bold green]✓ ready to train:[/bold green] {report.examples_valid:,} examples{note}"
        )
    else:
        fatal = next((p for p in report.problems if p.code in _UNCLEANABLE), None)
        advice = (
            escape(f"{fatal.message}: {fatal.fix}.")
            if fatal is not None
            else f"`tuneforge data clean {escape(report.path)}` fixes what is safe and drops "
            "the rest."
        )
        console.print(f"[bold red]✗ training would fail:[/bold red] {errors:,} error(s). {advice}")
