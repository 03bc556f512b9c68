"""Token measurement for the data layer: how long an example is, as training encodes it.

`tuneforge.data` never imports a tokenizer; it takes these functions as plain callables
(`tuneforge.data.lengths.Measure` / `TokenCount`), and the CLI wires them. The data layer
applies the rule of what is measured (a preference example: its longer conversation), so each
function here encodes one chat, prompt-completion or text example.

Example:
    >>> tokenizer = load_tokenizer("Qwen/Qwen2.5-0.5B")
    >>> report = validate(read_dataset("train.jsonl"), measure=token_measure(tokenizer),
    ...                   max_tokens=context_limit(tokenizer))
"""

from __future__ import annotations

from typing import Any

from tuneforge.data.io import Format
from tuneforge.data.lengths import Measure, TokenCount
from tuneforge.tokenize.encode import TRAIN_ON, encode
from tuneforge.tokenize.templates import ensure_chat_template

# A tokenizer's `model_max_length` above this is the "no limit" sentinel, not a context size.
NO_LIMIT = 10_000_000


def context_limit(tokenizer: Any) -> int | None:
    """The tokenizer's `model_max_length` when that is a real context size, else None."""
    model_max = getattr(tokenizer, "model_max_length", None)
    return model_max if isinstance(model_max, int) and 0 < model_max < NO_LIMIT else None


def token_counter(tokenizer: Any, train_on: str = "assistant") -> TokenCount:
    """(tokens, trained tokens) of one example, encoded as training encodes it.

    A chat template is added to `tokenizer` (when it has none) on the first chat example.
    Raises ValueError for an unknown `train_on`.
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"unknown train_on {train_on!r}; choose one of {', '.join(TRAIN_ON)}")
    templated = False

    def count(example: dict, fmt: Format | None) -> tuple[int, int]:
        nonlocal templated
        if not templated and fmt is Format.CHAT:
            ensure_chat_template(tokenizer)
            templated = True
        enc = encode(
            example, tokenizer, train_on=train_on, format=None if fmt is None else fmt.value
        )
        return len(enc), enc.num_trained

    return count


def token_measure(tokenizer: Any) -> Measure:
    """The number of tokens training sees for one example (`token_counter`'s first number)."""
    count = token_counter(tokenizer)

    def measure(example: dict, fmt: Format | None) -> int:
        return count(example, fmt)[0]

    return measure
