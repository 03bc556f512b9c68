"""Fixes that cannot change what the model learns, and truncating an over-long example.

`fix_example` normalises an example in place (Unicode NFC, line endings, control characters,
spacing outside code, role case, weights, unknown message keys); `LengthCheck` counts an
example's tokens and cuts it at a message or word boundary when asked.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from tuneforge.data.content import Slot, message_lists, text_slots
from tuneforge.data.io import Format
from tuneforge.data.lengths import Measure, estimate_tokens, measured
from tuneforge.data.problems import MESSAGE_KEYS, ROLES

# --- text normalisation ----------------------------------------------------------------------

# ASCII control characters other than "\n": with them, a text needs the full treatment.
_ASCII_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff]")
_FENCE = re.compile(r" {0,3}(?:```|~~~)")
_SPACE_RUN = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")


def _is_code_line(line: str) -> bool:
    """An indented code line (Markdown): four spaces or a tab before the text."""
    return line.startswith(("    ", "\t")) and not line.isspace()


def _already_clean(text: str) -> bool:
    """A quick test (C string methods only) that most ASCII prose passes: nothing to fix."""
    if not text.isascii():
        return False  # NFC and non-ASCII spaces need the full check
    if not text.isprintable() and _ASCII_CONTROL.search(text):  # isprintable: no "\n" either
        return False
    return not ("  " in text or " \n" in text or text[:1].isspace() or text[-1:].isspace())


def normalize_text(text: str) -> tuple[str, set[str]]:
    """Normalise one content string; returns the new text and the fixes applied.

    Line endings become "\\n", control characters are removed, and outside code (fenced with
    ``` or ~~~, or indented by four spaces or a tab) the text is put in Unicode NFC, runs of
    spaces and tabs between words are collapsed to one space and trailing spaces are removed.
    Code keeps its exact characters and indentation. The whole is stripped at both ends (leading
    indentation is kept when the text opens with indented code).

    Example:
        >>> normalize_text("  Hello   world \\r\\n")
        ('Hello world', {'whitespace', 'line_endings'})
    """
    if _already_clean(text):
        return text, set()
    fixes: set[str] = set()
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        fixes.add("line_endings")
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        fixes.add("control_characters")
    out = []
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line.rstrip() if not in_fence else line)
            continue
        if in_fence or _is_code_line(line):
            out.append(line)
            continue
        if not line.isascii() and not unicodedata.is_normalized("NFC", line):
            line = unicodedata.normalize("NFC", line)
            fixes.add("unicode_nfc")
        new = _SPACE_RUN.sub(" ", line).rstrip(" \t")
        if new != line:
            fixes.add("whitespace")
        out.append(new)
    text = "\n".join(out)
    first = text.lstrip("\n").split("\n", 1)[0]
    stripped = text.lstrip("\n").rstrip() if _is_code_line(first) else text.strip()
    if stripped != text:
        fixes.add("whitespace")
    return stripped, fixes


# --- per-example fixes -----------------------------------------------------------------------


def _weight_as_int(weight: Any) -> int | None:
    """0 or 1 for a weight written as 1.0, true or "1" (and the same for 0), else None."""
    if type(weight) is float or type(weight) is bool:
        return int(weight) if weight in (0, 1) else None
    if type(weight) is str and weight.strip() in ("0", "1"):
        return int(weight)
    return None


def fix_example(obj: dict) -> tuple[list[Slot], set[str]]:
    """Apply the safe fixes to `obj` in place; returns its content slots and the fixes applied."""
    messages = obj.get("messages")
    if len(obj) == 1 and type(messages) is list:
        plain = _fix_plain_chat(messages)
        if plain is not None:
            return plain
    fixes: set[str] = set()
    for messages in message_lists(obj):
        for m in messages:
            if type(m) is not dict:
                continue
            role = m.get("role")
            if type(role) is str and role not in ROLES:
                lowered = role.strip().lower()
                if lowered in ROLES:
                    m["role"] = lowered
                    fixes.add("role_case")
            if "weight" in m and type(m["weight"]) is not int:
                weight = _weight_as_int(m["weight"])
                if weight is not None:
                    m["weight"] = weight
                    fixes.add("weight")
            if not MESSAGE_KEYS.issuperset(m):
                for key in [k for k in m if k not in MESSAGE_KEYS]:
                    del m[key]
                fixes.add("message_keys")
    slots = text_slots(obj)
    for container, key, _ in slots:
        text = container[key]
        new, applied = normalize_text(text)
        if applied:
            container[key] = new
            fixes |= applied
    return slots, fixes


def _fix_plain_chat(messages: list) -> tuple[list[Slot], set[str]] | None:
    """`fix_example` of a chat of plain `{"role", "content"}` messages with known roles (most
    chats), where only the texts can need a fix; None for any other."""
    for m in messages:
        if type(m) is not dict or len(m) != 2:
            return None
        role = m.get("role")
        if type(role) is not str or role not in ROLES or type(m.get("content")) is not str:
            return None
    slots: list[Slot] = []
    fixes: set[str] = set()
    for m in messages:
        new, applied = normalize_text(m["content"])
        if applied:
            m["content"] = new
            fixes |= applied
        slots.append((m, "content", m["role"]))
    return slots, fixes


# --- length ----------------------------------------------------------------------------------


class LengthCheck:
    """Counts an example's tokens (exactly with `measure`, else estimated) and truncates."""

    def __init__(self, fmt: Format | None, max_tokens: int, measure: Measure | None = None):
        self.fmt = fmt
        self.max_tokens = max_tokens
        self.measure = measure

    def count(self, obj: dict) -> int:
        """Tokens training sees for `obj` (an estimate without `measure`)."""
        if self.measure is None:
            return estimate_tokens(obj, self.fmt)
        return measured(obj, self.fmt, self.measure)

    def truncate(self, obj: dict) -> dict | None:
        """The longest cut of `obj` that fits, or None when it cannot be cut safely.

        Chat: the longest prefix of the conversation that ends with an assistant message
        (a reply is never cut mid-way, so the model never learns to stop mid-sentence). Text:
        the longest prefix ending at a word boundary. Prompt-completion and preference examples
        cannot be shortened without cutting the answer or its context: None.
        """
        if self.fmt is Format.CHAT:
            messages = obj["messages"]
            ends = [i + 1 for i, m in enumerate(messages) if m.get("role") == "assistant"]
            for end in reversed(ends[:-1] if ends and ends[-1] == len(messages) else ends):
                candidate = {**obj, "messages": messages[:end]}
                if not _trains(candidate["messages"]):
                    continue
                if self.count(candidate) <= self.max_tokens:
                    return candidate
            return None
        if self.fmt is Format.TEXT:
            text = obj["text"]
            low, high = 0, len(text)  # invariant: a cut at `low` chars fits
            while low < high:
                mid = (low + high + 1) // 2
                if self.count({**obj, "text": text[:mid]}) <= self.max_tokens:
                    low = mid
                else:
                    high = mid - 1
            cut = text[:low]
            if low < len(text) and not text[low].isspace():
                space = max(cut.rfind(" "), cut.rfind("\n"))
                cut = cut[:space] if space > 0 else cut
            cut = cut.rstrip()
            return {**obj, "text": cut} if cut else None
        return None


def _trains(messages: list) -> bool:
    return any(m.get("role") == "assistant" and m.get("weight", 1) != 0 for m in messages)
