"""Checking one example against its format: `validate_example` and `is_valid_example`.

The chat checks live in `check_chat`; preference, prompt-completion and text here. Plain dict
and type tests (no schema library), so checking keeps up with reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuneforge.data.check_chat import check_chat, check_messages, check_tools, unrecognized_keys
from tuneforge.data.io import Format, Problem, parse_format
from tuneforge.data.problems import (
    INPUT_KEYS,
    MISSING,
    PREFERENCE_KEYS,
    PROMPT_COMPLETION_KEYS,
    TEXT_KEYS,
    kind_of,
    looks_like,
    preference_output,
    problem,
    show,
)

# --- preference -----------------------------------------------------------------------------


def _check_preference(obj: dict, line: int | None, out: list[Problem]) -> int:
    seen = 0
    inp = obj.get("input", MISSING)
    if inp is MISSING or inp is None:
        out.append(
            problem("missing_input", f"no `input`{looks_like(obj, Format.PREFERENCE)}", line)
        )
    elif type(inp) is not dict:
        out.append(problem("invalid_input", f"`input` is {kind_of(inp)}, not an object", line))
    else:
        messages = inp.get("messages")
        if type(messages) is not list or not messages:
            out.append(problem("invalid_input", "`input.messages` is not a non-empty list", line))
        else:
            seen = check_messages(messages, "input.messages", line, out, need_assistant=False)
        if inp.get("tools") is not None:
            check_tools(inp["tools"], "input.tools", line, out)
        if not INPUT_KEYS.issuperset(inp):
            unrecognized_keys(inp, INPUT_KEYS, line, out)
    outputs = []
    for side in ("preferred", "non_preferred"):
        key, value = preference_output(obj, side)
        if value is MISSING or value is None:
            out.append(problem("missing_preference_output", f"no `{key}`", line))
            continue
        if type(value) is str and key.endswith("_completion"):
            value = [{"role": "assistant", "content": value}]
        if type(value) is not list:
            out.append(
                problem(
                    "invalid_preference_output", f"`{key}` is {kind_of(value)}, not a list", line
                )
            )
            continue
        first = value[0] if len(value) == 1 else None
        if type(first) is not dict or first.get("role") != "assistant":
            out.append(
                problem(
                    "invalid_preference_output",
                    f"`{key}` must hold exactly one assistant message, got {show(value)}",
                    line,
                )
            )
            continue
        found = len(out)
        check_messages(value, key, line, out, need_assistant=False)
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
        unrecognized_keys(obj, PREFERENCE_KEYS, line, out)
    return seen


# --- prompt-completion and text -------------------------------------------------------------


def _check_prompt_completion(obj: dict, line: int | None, out: list[Problem]) -> int:
    prompt = obj.get("prompt", MISSING)
    if prompt is MISSING or prompt is None:
        out.append(
            problem(
                "missing_prompt", f"no `prompt`{looks_like(obj, Format.PROMPT_COMPLETION)}", line
            )
        )
    elif type(prompt) is not str:
        out.append(
            problem("invalid_prompt_type", f"`prompt` is {kind_of(prompt)}, not a string", line)
        )
    completion = obj.get("completion", MISSING)
    if completion is MISSING or completion is None:
        out.append(problem("missing_completion", "no `completion`", line))
    elif type(completion) is not str:
        out.append(
            problem(
                "invalid_completion_type",
                f"`completion` is {kind_of(completion)}, not a string",
                line,
            )
        )
    elif not completion or completion.isspace():
        out.append(problem("empty_completion", f"the completion is {show(completion)}", line))
    if len(obj) > 2 and not PROMPT_COMPLETION_KEYS.issuperset(obj):
        unrecognized_keys(obj, PROMPT_COMPLETION_KEYS, line, out)
    return 0


def _check_text(obj: dict, line: int | None, out: list[Problem]) -> int:
    text = obj.get("text", MISSING)
    if text is MISSING or text is None:
        out.append(problem("missing_text", f"no `text`{looks_like(obj, Format.TEXT)}", line))
    elif type(text) is not str:
        out.append(problem("invalid_text_type", f"`text` is {kind_of(text)}, not a string", line))
    elif not text or text.isspace():
        out.append(problem("empty_text", "the text is empty", line))
    if len(obj) > 1 and not TEXT_KEYS.issuperset(obj):
        unrecognized_keys(obj, TEXT_KEYS, line, out)
    return 0


Checker = Callable[[dict, "int | None", list[Problem]], int]
CHECKERS: dict[Format, Checker] = {
    Format.CHAT: check_chat,
    Format.PREFERENCE: _check_preference,
    Format.PROMPT_COMPLETION: _check_prompt_completion,
    Format.TEXT: _check_text,
}


def _checker(fmt: Format | str) -> Checker:
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
        out.append(problem("data_type", f"the example is {kind_of(obj)}, not a JSON object", line))
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
