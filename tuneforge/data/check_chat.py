"""Checks of one OpenAI chat example: its messages, tools, tool calls and content parts.

`check_messages` walks a conversation once: a fast path for plain `{"role", "content"}` messages
(most of them), and one small function per concern for the rest.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from tuneforge.data.io import Format, Problem
from tuneforge.data.problems import (
    CHAT_KEYS,
    MESSAGE_KEYS,
    MISSING,
    ROLES,
    kind_of,
    looks_like,
    problem,
    show,
)

# --- chat -----------------------------------------------------------------------------------

# Bits of the roles seen in a conversation, for the dataset summary.
HAS_SYSTEM = 1
HAS_USER = 2


def check_tools(tools: Any, where: str, line: int | None, out: list[Problem]) -> None:
    if type(tools) is not list:
        out.append(problem("invalid_tools", f"`{where}` is {kind_of(tools)}, not a list", line))
        return
    for k, tool in enumerate(tools):
        fn = tool.get("function") if type(tool) is dict else None
        if type(fn) is not dict or type(fn.get("name")) is not str or not fn["name"]:
            out.append(
                problem(
                    "invalid_tools",
                    f"`{where}[{k}]` is not a function tool with a name: {show(tool)}",
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
                "invalid_tool_calls", f"`{where}.tool_calls` is {kind_of(calls)}, not a list", line
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
                    f"`{where}.tool_calls[{k}]` has no function name: {show(call)}",
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
                        f"{show(arguments)}",
                        line,
                    )
                )
        elif arguments is not None and type(arguments) is not dict:
            out.append(
                problem(
                    "invalid_tool_calls",
                    f"`{where}.tool_calls[{k}].function.arguments` is {kind_of(arguments)}, "
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
                    f"`{where}.content[{k}]` is a {show(kind)} part, not text",
                    line,
                )
            )
        else:
            out.append(
                problem(
                    "invalid_content_type",
                    f'`{where}.content[{k}]` is not a {{"type": "text", "text": ...}} part: '
                    f"{show(part)}",
                    line,
                )
            )
    return text


def check_messages(
    messages: list,
    where: str,
    line: int | None,
    out: list[Problem],
    *,
    need_assistant: bool,
) -> int:
    """Check a list of OpenAI chat messages; returns the `HAS_*` bits of the roles seen.

    `need_assistant`: a training conversation must hold an assistant message that is trained
    (weight not 0); a preference prompt need not.
    """
    seen = 0
    prev_role = None
    assistants = trained = 0
    pending: dict[str, int] = {}  # tool call id -> index of the assistant message that made it
    for i, m in enumerate(messages):
        # Fast path: a plain {"role", "content"} message with text, as most messages are.
        if type(m) is dict and len(m) == 2:
            role = m.get("role")
            content = m.get("content")
            if type(content) is str and content and not content.isspace() and prev_role != role:
                if role == "user":
                    seen |= HAS_USER
                    prev_role = role
                    continue
                if role == "assistant":
                    assistants += 1
                    trained += 1
                    prev_role = role
                    continue
                if role == "system" and not i:
                    seen |= HAS_SYSTEM
                    prev_role = role
                    continue
        prev_role, bits, is_trained = _check_message(m, i, where, prev_role, line, out, pending)
        seen |= bits
        if prev_role == "assistant":
            assistants += 1
            trained += is_trained
    _check_unanswered(pending, where, len(messages) - 1, line, out)
    if need_assistant:
        _check_ending(messages, assistants, trained, prev_role, line, out)
    return seen


def _check_message(
    m: Any,
    i: int,
    where: str,
    prev_role: Any,
    line: int | None,
    out: list[Problem],
    pending: dict[str, int],
) -> tuple[Any, int, bool]:
    """Every check of one message: returns its role, the `HAS_*` bit it sets, and whether it
    is a trained assistant message."""
    at = f"{where}[{i}]"
    if type(m) is not dict:
        out.append(problem("message_not_object", f"`{at}` is {kind_of(m)}, not an object", line))
        return None, 0, False
    role = m.get("role")
    _check_keys_and_role(m, role, at, line, out)
    calls = m.get("tool_calls")
    _check_content(m, role, calls, at, line, out)
    if "name" in m and type(m["name"]) is not str:
        out.append(problem("invalid_name_type", f"`{at}.name` is {kind_of(m['name'])}", line))
    is_trained = False
    if role == "assistant":
        is_trained = _check_assistant(m, calls, at, i, line, out, pending)
    else:
        _check_not_assistant(m, role, calls, at, line, out)
    bits = _check_role_fields(m, role, i, prev_role, at, line, out, pending)
    if role == prev_role and role != "tool" and role is not None:
        out.append(
            problem("consecutive_same_role", f"`{at}` is a second {role} message in a row", line)
        )
    return role, bits, is_trained


def _check_keys_and_role(m: dict, role: Any, at: str, line: int | None, out: list[Problem]) -> None:
    if not MESSAGE_KEYS.issuperset(m):
        extra = [k for k in m if k not in MESSAGE_KEYS]
        out.append(
            problem(
                "message_unrecognized_key",
                f"`{at}` has unrecognized key(s) {', '.join(show(k) for k in extra[:5])}",
                line,
            )
        )
    if role is None:
        out.append(problem("message_missing_key", f"`{at}` has no `role`", line))
    elif type(role) is not str or role not in ROLES:
        hint = ": use `tool` with a `tool_call_id`" if role == "function" else ""
        out.append(problem("unrecognized_role", f"`{at}` has role {show(role)}{hint}", line))


def _check_content(
    m: dict, role: Any, calls: Any, at: str, line: int | None, out: list[Problem]
) -> None:
    content = m.get("content", MISSING)
    if type(content) is str:
        if not content or content.isspace():
            # An empty reply is what the model would learn; empty context is only noise.
            is_target = role == "assistant" and not calls and m.get("weight", 1) != 0
            out.append(
                problem(
                    "empty_content",
                    f"`{at}` ({show(role)}) has {'empty' if not content else 'blank'} content",
                    line,
                    "error" if is_target else "warning",
                )
            )
    elif content is MISSING or content is None:
        if not (role == "assistant" and calls):
            if content is MISSING:
                out.append(problem("message_missing_key", f"`{at}` has no `content`", line))
            else:
                out.append(problem("missing_content", f"`{at}` has null content", line))
    elif type(content) is list:
        if not _check_parts(content, at, line, out) and not calls:
            is_target = role == "assistant" and m.get("weight", 1) != 0
            out.append(
                problem(
                    "empty_content",
                    f"`{at}` ({show(role)}) has no text in its content parts",
                    line,
                    "error" if is_target else "warning",
                )
            )
    else:
        out.append(
            problem(
                "invalid_content_type",
                f"`{at}.content` is {kind_of(content)}, not a string or a list of parts",
                line,
            )
        )


def _check_assistant(
    m: dict,
    calls: Any,
    at: str,
    i: int,
    line: int | None,
    out: list[Problem],
    pending: dict[str, int],
) -> bool:
    """An assistant's weight and tool calls; True when the message counts as trained."""
    weight = m.get("weight", 1)
    valid_weight = type(weight) in (int, float) and weight in (0, 1)
    if not valid_weight:
        out.append(problem("invalid_weight", f"`{at}.weight` is {show(weight)}, not 0 or 1", line))
    if calls is not None:
        _check_tool_calls(calls, at, i, line, out, pending)
    # A bad weight is reported once, as a bad weight, not again as nothing trained.
    return not valid_weight or bool(weight)


def _check_not_assistant(
    m: dict, role: Any, calls: Any, at: str, line: int | None, out: list[Problem]
) -> None:
    if "weight" in m:
        out.append(
            problem(
                "invalid_weight",
                f"`{at}` ({show(role)}) has a `weight`, which only assistant messages "
                "take; it is ignored",
                line,
                "warning",
            )
        )
    if calls is not None:
        out.append(
            problem(
                "invalid_tool_calls",
                f"`{at}` ({show(role)}) has `tool_calls`: only assistants call tools",
                line,
            )
        )


def _check_role_fields(
    m: dict,
    role: Any,
    i: int,
    prev_role: Any,
    at: str,
    line: int | None,
    out: list[Problem],
    pending: dict[str, int],
) -> int:
    """A tool reply's call id, and where a system message stands; the `HAS_*` bit of the role."""
    if role == "tool":
        call_id = m.get("tool_call_id", MISSING)
        if call_id is MISSING:
            out.append(problem("message_missing_key", f"`{at}` has no `tool_call_id`", line))
        elif type(call_id) is not str or call_id not in pending:
            out.append(
                problem(
                    "unmatched_tool_call_id",
                    f"`{at}.tool_call_id` {show(call_id)} answers no earlier tool call",
                    line,
                )
            )
        else:
            del pending[call_id]
    elif "tool_call_id" in m:
        out.append(
            problem(
                "message_unrecognized_key",
                f"`{at}` ({show(role)}) has a `tool_call_id`: only tool messages do",
                line,
            )
        )
    elif role == "system":
        if i and prev_role != "system":
            out.append(
                problem("system_not_first", f"`{at}` is a system message after others", line)
            )
        return HAS_SYSTEM
    elif role == "user":
        return HAS_USER
    return 0


def _check_unanswered(
    pending: dict[str, int], where: str, last: int, line: int | None, out: list[Problem]
) -> None:
    for call_id, index in pending.items():
        if index != last:  # a conversation may end on a call: it teaches when to call
            out.append(
                problem(
                    "unanswered_tool_call",
                    f"tool call {show(call_id)} in `{where}[{index}]` is never answered",
                    line,
                )
            )


def _check_ending(
    messages: list,
    assistants: int,
    trained: int,
    last_role: Any,
    line: int | None,
    out: list[Problem],
) -> None:
    """A training conversation holds a trained assistant message and ends with one."""
    if not assistants:
        out.append(problem("example_missing_assistant_message", "no assistant message", line))
    elif not trained:
        out.append(problem("no_trained_message", "every assistant message has weight 0", line))
    elif last_role != "assistant" and type(messages[-1]) is dict:
        out.append(
            problem(
                "last_message_not_assistant",
                f"the conversation ends with a {show(last_role)} message",
                line,
            )
        )


class PlainMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    content: str


class PlainChat(msgspec.Struct, forbid_unknown_fields=True):
    """A chat example of plain messages only, as most are: `{"messages": [{"role": ...,
    "content": ...}, ...]}` with string values and no other key."""

    messages: list[PlainMessage]


# Decodes a JSON line that is a `PlainChat`, type checks included, in C; raises
# `msgspec.DecodeError` for any other line.
PLAIN_CHAT = msgspec.json.Decoder(PlainChat)


def plain_chat_bits(messages: list[PlainMessage]) -> int | None:
    """The `HAS_*` bits of a plain conversation in which `check_chat` finds no problem; None
    when it may find one (then run it).

    The same rules as `check_messages`' fast path, for the conversations it passes: every text
    non-blank, roles taking turns, a system message first only, an assistant last.
    """
    seen = 0
    prev_role = None
    for i, m in enumerate(messages):
        role = m.role
        content = m.content
        if not content or content.isspace() or role == prev_role:
            return None
        if role == "user":
            seen |= HAS_USER
        elif role == "system" and not i:
            seen |= HAS_SYSTEM
        elif role != "assistant":
            return None
        prev_role = role
    return seen if prev_role == "assistant" else None


def check_chat(obj: dict, line: int | None, out: list[Problem]) -> int:
    messages = obj.get("messages", MISSING)
    if type(messages) is not list or not messages:
        if messages is MISSING or messages is None:
            out.append(
                problem(
                    "missing_messages_list",
                    f"no `messages` list{looks_like(obj, Format.CHAT)}",
                    line,
                )
            )
        elif type(messages) is list:
            out.append(problem("missing_messages_list", "`messages` is empty", line))
        else:
            out.append(
                problem(
                    "invalid_messages_type", f"`messages` is {kind_of(messages)}, not a list", line
                )
            )
        return 0
    if len(obj) > 1:
        if "tools" in obj and obj["tools"] is not None:
            check_tools(obj["tools"], "tools", line, out)
        if not CHAT_KEYS.issuperset(obj):
            unrecognized_keys(obj, CHAT_KEYS, line, out)
    return check_messages(messages, "messages", line, out, need_assistant=True)


def unrecognized_keys(obj: dict, known: frozenset, line: int | None, out: list[Problem]) -> None:
    extra = [k for k in obj if k not in known]
    out.append(
        problem(
            "unrecognized_key",
            f"key(s) {', '.join(show(k) for k in extra[:5])} are not read and will be ignored",
            line,
        )
    )
