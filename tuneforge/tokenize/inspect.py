"""Showing examples as the model sees them: token by token, trained tokens highlighted."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from tuneforge.data.io import Format, detect_format
from tuneforge.tokenize.encode import Encoded, encode, encode_preference, token_view

TRAINED_STYLE = "bold black on green"
MASKED_STYLE = "dim"


def render_tokens(enc: Encoded, tokenizer: Any, show_boundaries: bool = True) -> Text:
    """Rich text of the example: trained tokens highlighted, masked tokens dimmed.

    With `show_boundaries`, token boundaries alternate underline so each token is visible.
    Newlines are shown as "↵" followed by a real line break.
    """
    text = Text()
    for k, (piece, trained) in enumerate(token_view(enc, tokenizer)):
        style = TRAINED_STYLE if trained else MASKED_STYLE
        if show_boundaries and k % 2:
            style += " underline"
        text.append(piece.replace("\n", "↵\n"), style=style)
    text.rstrip()  # the break after a final "↵" would only add an empty line
    return text


def _counts(enc: Encoded) -> str:
    trained = enc.num_trained
    return f"tokens {len(enc)}   trained {trained}   masked {len(enc) - trained}"


def inspect_example(
    example: dict, tokenizer: Any, train_on: str = "assistant", title: str = ""
) -> tuple[Panel, Encoded]:
    """A Rich panel showing one encoded example and its token counts.

    A preference example shows both conversations as preference tuning (DPO) encodes them:
    the prompt with the preferred reply, then with the non-preferred one (`train_on` does not
    apply: only the replies train). The returned `Encoded` is the preferred conversation.
    """
    if isinstance(example, dict) and detect_format(example) == Format.PREFERENCE:
        chosen, rejected = encode_preference(example, tokenizer)
        parts: list[Any] = []
        for label, enc in (("preferred", chosen), ("non-preferred", rejected)):
            parts += [
                Text(f"{label} reply", style="bold underline"),
                render_tokens(enc, tokenizer),
                Text(_counts(enc), style="bold"),
                Text(),
            ]
        return Panel(Group(*parts[:-1]), title=title), chosen
    enc = encode(example, tokenizer, train_on=train_on)
    counts = Text(_counts(enc), style="bold")
    return Panel(Group(render_tokens(enc, tokenizer), Text(), counts), title=title), enc
