"""Where an example's text lives: its content slots (each message's content or part, each text
field) with the role they belong to, which fixing, filtering and deduplication all walk."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Slot = tuple[Any, Any, str]  # (container, key, role): one content string, container[key]


def _message_slots(messages: Any, slots: list[Slot], prefix: str = "") -> None:
    if type(messages) is not list:
        return
    for m in messages:
        if type(m) is not dict:
            continue
        role = m.get("role")
        role = prefix + (role if type(role) is str else "?")
        content = m.get("content")
        if type(content) is str:
            slots.append((m, "content", role))
        elif type(content) is list:
            for part in content:
                if type(part) is dict and type(part.get("text")) is str:
                    slots.append((part, "text", role))


def text_slots(obj: dict) -> list[Slot]:
    """Every content string of an example, with the role (or field) it belongs to."""
    slots: list[Slot] = []
    if "messages" in obj:
        _message_slots(obj["messages"], slots)
    for key in ("prompt", "completion", "text"):
        if type(obj.get(key)) is str:
            slots.append((obj, key, key))
    inp = obj.get("input")
    if type(inp) is dict:
        _message_slots(inp.get("messages"), slots, "input:")
    for side in ("preferred", "non_preferred"):
        for key in (f"{side}_output", f"{side}_completion"):
            value = obj.get(key)
            if type(value) is str:
                slots.append((obj, key, f"{side}:assistant"))
            else:
                _message_slots(value, slots, f"{side}:")
    return slots


def message_lists(obj: dict) -> Iterable[list]:
    for value in (
        obj.get("messages"),
        obj["input"].get("messages") if type(obj.get("input")) is dict else None,
        obj.get("preferred_output"),
        obj.get("non_preferred_output"),
    ):
        if type(value) is list:
            yield value
