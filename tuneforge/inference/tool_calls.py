"""Tool calls in generated text, per chat-template family: parsing, streaming, forcing.

A model calls tools in the format its chat template taught it. `tool_family` is the one
place that decides which format a template speaks:

- "hermes": `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks (Hermes,
  Qwen2.5, and TuneForge's own `DEFAULT_CHAT_TEMPLATE` for models without a template);
- "llama3": a bare JSON object `{"name": ..., "parameters": {...}}` (Llama 3.x; several calls
  separated by ";"), optionally after `<|python_tag|>`;
- "mistral": `[TOOL_CALLS]` followed by a JSON array of `{"name", "arguments"}` objects.

`parse(family, text, final)` splits a reply into content and calls; with `final=False` it
parses a reply still being generated and returns only what can no longer change (content
that cannot be the start of a call, a call's name once complete, its arguments so far), so
`ToolStreamer` can send OpenAI's deltas: the call's id and name first, then its arguments in
pieces. `forcing_grammar` is the grammar (llguidance Lark with embedded JSON schemas) that
makes `tool_choice: "required"` or a named function a valid call whose arguments match the
tool's JSON schema.

Example:
    >>> parse("hermes", '<tool_call>\\n{"name": "f", "arguments": {"x": 1}}\\n</tool_call>', True)
    Parsed(content='', calls=[Call(name='f', arguments='{"x": 1}', complete=True)])
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("hermes", "llama3", "mistral")
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_TAG = "[TOOL_CALLS]"
LLAMA_TAG = "<|python_tag|>"

# The start of a call object up to its arguments: `{"name": "f", "arguments": `.
_PREFIX = re.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)


def tool_family(chat_template: str | None) -> str:
    """Which tool-call format a chat template speaks (see the module docstring)."""
    text = chat_template or ""
    if MISTRAL_TAG in text:
        return "mistral"
    if HERMES_OPEN in text:
        return "hermes"
    if LLAMA_TAG in text or ("<|eot_id|>" in text and "parameters" in text):
        return "llama3"
    return "hermes"


@dataclass
class Call:
    """One tool call: `name` is None until it is known; `arguments` is JSON text (so far)."""

    name: str | None
    arguments: str
    complete: bool


@dataclass
class Parsed:
    content: str
    calls: list[Call] = field(default_factory=list)


def _json_end(text: str, start: int = 0) -> int | None:
    """Index just past the JSON value (object or array) starting at `text[start]`, or None
    while it is not closed yet. Strings are skipped, so braces inside them do not count."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _call(body: str, complete: bool) -> Call | None:
    """A call from the text of its JSON object; None when a complete body is not a call."""
    match = _PREFIX.match(body)
    if complete:
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            arguments_text = arguments
        elif match is not None and (end := _json_end(body, match.end())) is not None:
            arguments_text = body[match.end() : end]  # as generated (what was streamed)
        else:
            arguments_text = json.dumps(arguments)
        return Call(value["name"], arguments_text, True)
    if match is None:
        return Call(None, "", False)
    name = json.loads('"' + match.group(1) + '"')
    rest = body[match.end() :]
    end = _json_end(rest) if rest.startswith(("{", "[")) else None
    return Call(name, rest if end is None else rest[:end], False)


def _hold_back(text: str, marker: str) -> str:
    """`text` without a tail that could still grow into `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return text[:-k]
    return text


def _values(text: str, final: bool) -> list[Call | None]:
    """Calls from consecutive JSON objects separated by whitespace, ',' or ';'."""
    calls: list[Call | None] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,;":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return calls
        if text[pos] != "{":
            return [*calls, None]
        end = _json_end(text, pos)
        if end is None:
            calls.append(_call(text[pos:], complete=final))
            return calls
        calls.append(_call(text[pos:end], complete=True))
        pos = end


def parse(family: str, text: str, final: bool) -> Parsed:
    """Content and tool calls of a reply (`final`: the reply is complete).

    A complete reply whose call text is not a valid call is all content (no calls), as vLLM
    does; while generating, only content that cannot start a call is returned.
    """
    if family == "hermes":
        first = text.find(HERMES_OPEN)
        if first < 0:
            return Parsed(text if final else _hold_back(text, HERMES_OPEN))
        calls: list[Call | None] = []
        pos = first
        while pos >= 0:
            start = pos + len(HERMES_OPEN)
            end = text.find(HERMES_CLOSE, start)
            body = text[start:] if end < 0 else text[start:end]
            if body.strip() or end >= 0 or final:
                calls.append(_call(body, complete=end >= 0 or final))
            if end < 0:
                break
            pos = text.find(HERMES_OPEN, end + len(HERMES_CLOSE))
        head = text[:first]
    else:
        stripped = text.lstrip()
        if family == "mistral":
            stripped = stripped.removeprefix(MISTRAL_TAG).lstrip()
            opener = "["
        else:
            stripped = stripped.removeprefix(LLAMA_TAG).lstrip()
            opener = "{"
        if not stripped:
            return Parsed(text if final else "")
        if not stripped.startswith(opener):
            return Parsed(text)
        calls = _values(stripped[1:] if opener == "[" else stripped, final)
        head = ""
    if final and (not calls or any(c is None or c.name is None for c in calls)):
        return Parsed(text)
    if any(c is None for c in calls):  # not a call after all: it will be content at the end
        return Parsed(head)
    return Parsed(head, [c for c in calls if c is not None])


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def openai_calls(calls: list[Call]) -> list[dict[str, Any]]:
    """OpenAI's `message.tool_calls` for complete calls."""
    return [
        {
            "id": new_call_id(),
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for c in calls
    ]


class ToolStreamer:
    """Turns one choice's text deltas into OpenAI chat-chunk deltas with `tool_calls`.

    Each call is announced once its name is known (`id`, `type`, `function.name`, empty
    arguments), then its arguments follow in pieces as they are generated. `feed` returns the
    delta dicts to send (possibly none); `finish` the last ones and whether any call was made.
    """

    def __init__(self, family: str, parallel: bool = True) -> None:
        self.family, self.parallel = family, parallel
        self.text = ""
        self.sent_content = 0
        self.sent: list[tuple[str, str]] = []  # per announced call: (id, arguments sent)

    def feed(self, text: str, final: bool = False) -> list[dict[str, Any]]:
        self.text += text
        parsed = parse(self.family, self.text, final)
        out: list[dict[str, Any]] = []
        if len(parsed.content) > self.sent_content and parsed.content.startswith(
            self.text[: self.sent_content]
        ):
            out.append({"content": parsed.content[self.sent_content :]})
            self.sent_content = len(parsed.content)
        for i, call in enumerate(parsed.calls if self.parallel else parsed.calls[:1]):
            if call.name is None:
                break
            if i == len(self.sent):
                call_id = new_call_id()
                self.sent.append((call_id, ""))
                announce = {"name": call.name, "arguments": ""}
                piece = {"index": i, "id": call_id, "type": "function", "function": announce}
                out.append({"tool_calls": [piece]})
            call_id, sent_args = self.sent[i]
            if len(call.arguments) > len(sent_args) and call.arguments.startswith(sent_args):
                more = call.arguments[len(sent_args) :]
                out.append({"tool_calls": [{"index": i, "function": {"arguments": more}}]})
                self.sent[i] = (call_id, call.arguments)
        return out

    def finish(self) -> tuple[list[dict[str, Any]], bool]:
        """The remaining deltas once the reply is complete, and whether it called tools."""
        out = self.feed("", final=True)
        return out, bool(self.sent)


def merge_deltas(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """`ToolStreamer`'s deltas as one chunk delta: the content joined, and one `tool_calls`
    entry per call index (its announcement and argument pieces merged, in order)."""
    out: dict[str, Any] = {}
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        if "content" in piece:
            out["content"] = out.get("content", "") + piece["content"]
        for call in piece.get("tool_calls", ()):
            held = calls.get(call["index"])
            if held is None:
                calls[call["index"]] = {**call, "function": dict(call["function"])}
            else:
                fn = held["function"]
                fn["arguments"] = fn.get("arguments", "") + call["function"]["arguments"]
    if calls:
        out["tool_calls"] = [calls[i] for i in sorted(calls)]
    return out


def _call_schema(tool: dict[str, Any], arguments_key: str) -> dict[str, Any]:
    fn = tool["function"]
    parameters = fn.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def forcing_grammar(family: str, tools: list[dict[str, Any]], parallel: bool) -> str:
    """Lark (llguidance) for a reply that is only tool calls of `tools` (one, or one or more
    when `parallel`), each with arguments that match its tool's JSON schema."""
    key = "parameters" if family == "llama3" else "arguments"
    schemas = [_call_schema(t, key) for t in tools]
    schema: dict[str, Any] = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    schema = {**schema, "x-guidance": {"whitespace_flexible": False}}  # compact JSON
    body = "%json " + json.dumps(schema)
    if family == "hermes":
        call = f'"{HERMES_OPEN}\\n" body "\\n{HERMES_CLOSE}"'
        start = 'call ("\\n" call)*' if parallel else "call"
        return f"start: {start}\ncall: {call}\nbody: {body}\n"
    if family == "mistral":
        start = '"[" body ("," body)* "]"' if parallel else '"[" body "]"'
        return f"start: {start}\nbody: {body}\n"
    start = 'body (";" body)*' if parallel else "body"
    return f"start: {start}\nbody: {body}\n"
