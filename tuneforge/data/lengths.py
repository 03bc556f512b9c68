"""One definition of an example's length, and the token statistics of a dataset.

An example's length is what has to fit the model's context: a chat, prompt-completion or text
example as training encodes it; a preference example by the longer of its two conversations
(input + preferred reply, input + non-preferred reply), since both are trained on. `measured`
applies that rule to any size function: an estimate here (characters / 4), exact token counts
from `tuneforge.tokenize.measure`, which the caller passes in as a `Measure` (this layer never
imports a tokenizer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tuneforge.data.io import Format, Problem
from tuneforge.data.problems import CHARS_PER_TOKEN, preference_output, problem, show

Measure = Callable[[dict, "Format | None"], int]
"""The exact number of tokens training sees for one valid chat, prompt-completion or text
example (see `tuneforge.tokenize.measure.token_measure`); it may raise on input a template
refuses. Preference examples are never passed: `measured` passes their conversations."""
TokenCount = Callable[[dict, "Format | None"], tuple[int, int]]
"""(tokens, trained tokens) of one valid example as training encodes it, like `Measure` (see
`tuneforge.tokenize.measure.token_counter`)."""

T = TypeVar("T")


def preference_chats(obj: dict) -> list[dict]:
    """The two conversations a valid preference example trains on, as chat examples."""
    inp = obj["input"]
    chats = []
    for side in ("preferred", "non_preferred"):
        _, value = preference_output(obj, side)
        if type(value) is str:
            value = [{"role": "assistant", "content": value}]
        chat: dict[str, Any] = {"messages": [*inp["messages"], *value]}
        if inp.get("tools"):
            chat["tools"] = inp["tools"]
        chats.append(chat)
    return chats


def measured(
    obj: dict,
    fmt: Format | None,
    size: Callable[[dict, Format | None], T],
    key: Callable[[T], Any] | None = None,
) -> T:
    """`size` of an example: of the example itself, or of the longer conversation of a
    preference example (the larger `size`, compared by `key` when given)."""
    if fmt is Format.PREFERENCE:
        sizes = [size(chat, Format.CHAT) for chat in preference_chats(obj)]
        return max(sizes, key=key) if key is not None else max(sizes)  # type: ignore[type-var]
    return size(obj, fmt)


def message_text(m: Any) -> str:
    """The text of one message's content (a string, or the text of its parts)."""
    if type(m) is not dict:
        return ""
    content = m.get("content")
    if type(content) is str:
        return content
    if type(content) is list:
        return "".join(p["text"] for p in content if type(p) is dict and type(p.get("text")) is str)
    return ""


def characters(obj: dict, fmt: Format | None) -> int:
    """The characters of text an example holds (messages' contents, or its fields)."""
    if fmt is Format.CHAT:
        return sum(len(message_text(m)) for m in obj.get("messages") or [])
    if fmt is Format.PROMPT_COMPLETION:
        return len(obj.get("prompt") or "") + len(obj.get("completion") or "")
    return len(obj.get("text") or "")


def _estimate(obj: dict, fmt: Format | None) -> int:
    chars = characters(obj, fmt)
    messages = (obj.get("messages") or []) if fmt is Format.CHAT else []
    for m in messages:
        calls = m.get("tool_calls") if type(m) is dict else None
        if calls:
            chars += len(json.dumps(calls, ensure_ascii=False))
    if fmt is Format.CHAT and obj.get("tools"):
        chars += len(json.dumps(obj["tools"], ensure_ascii=False))
    return math.ceil(chars / CHARS_PER_TOKEN) + 4 * len(messages) + 1


def estimate_tokens(obj: dict, fmt: Format | None) -> int:
    """About how many tokens an example takes: its characters / 4, plus 4 per chat message."""
    return measured(obj, fmt, _estimate)


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


def token_lengths(
    examples: list[tuple[int, dict]],
    fmt: Format | None,
    measure: Measure | None,
    limit: int | None,
    problems: list[Problem],
) -> tuple[TokenStats | None, int]:
    """Token lengths of `examples` (problems added for over-long ones) and how many failed.

    `measure` counts exactly; without it lengths are estimated (`estimate_tokens`).
    """
    lengths = []
    over = failed = 0
    for line, obj in examples:
        if measure is None:
            n = estimate_tokens(obj, fmt)
        else:
            try:
                n = measured(obj, fmt, measure)
            except Exception as e:  # a template or tokenizer can raise anything on odd input
                problems.append(
                    problem("tokenize_failed", f"cannot be tokenized: {show(str(e), 120)}", line)
                )
                failed += 1
                continue
        lengths.append(n)
        if limit is not None and n > limit:
            over += 1
            about = "" if measure is not None else "about "
            problems.append(
                problem(
                    "too_long",
                    f"{about}{n} tokens, more than the limit of {limit}"
                    + ("" if measure is not None else " (estimated: pass --model to count)"),
                    line,
                )
            )
    if not lengths:
        return None, failed
    ordered = sorted(lengths)
    stats = TokenStats(
        exact=measure is not None,
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
