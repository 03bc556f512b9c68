"""Showing examples as the model sees them: token by token, trained tokens highlighted."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from tuneforge.tokenize.encode import Encoded, encode, token_view

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


def inspect_example(
    example: dict, tokenizer: Any, train_on: str = "assistant", title: str = ""
) -> tuple[Panel, Encoded]:
    """A Rich panel showing one encoded example and its token counts."""
    enc = encode(example, tokenizer, train_on=train_on)
    trained = enc.num_trained
    counts = Text(
        f"tokens {len(enc)}   trained {trained}   masked {len(enc) - trained}", style="bold"
    )
    return Panel(Group(render_tokens(enc, tokenizer), Text(), counts), title=title), enc
