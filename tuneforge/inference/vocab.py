"""What one model's tokenizer gives the engine: encoding, chat rendering, token-bytes tables.

A `Vocab` is kept per model (by `residency.Residency`) and dropped with its model, so the
tables built from it (JSON mode, logprobs, the prompt-size bound) never outlive the model.

Prompts are measured before they are tokenized: `encode` and `prepare_chat` take a
`max_chars` bound and refuse longer text (`PromptTooLong`) without touching the tokenizer.
Tokenizing takes no lock: a fast tokenizer only mutates itself when a call asks for
truncation or padding other than what it has, and nothing here asks, so with both switched
off once (in `Vocab.__init__`) concurrent calls only read it (and run in parallel: the Rust
tokenizer releases the GIL). One long prompt never makes a short one wait.
"""

from __future__ import annotations

import threading
from typing import Any

from tuneforge.inference.params import PromptTooLong
from tuneforge.inference.tokens import token_bytes_table
from tuneforge.inference.tool_calls import tool_family
from tuneforge.tokenize.tokenizer import stop_ids


class Vocab:
    """One model's tokenizer, its context length, and tables derived from it on first use."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        # transformers' fast tokenizer resets the backend's truncation / padding on each call
        # when they differ from the call's (none): switch them off now, once, so that every
        # later call only reads the backend and calls from several threads cannot collide.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            if backend.truncation is not None:
                backend.no_truncation()
            if backend.padding is not None:
                backend.no_padding()
        self.tokenizer = tokenizer
        self.context_length = context_length
        # Where a chat reply ends: EOS and the template's end-of-turn token (one rule for
        # training, evaluation and serving; probed once, before the tokenizer is shared).
        self.chat_stop_ids: tuple[int, ...] = tuple(stop_ids(tokenizer))
        self._bytes: list[bytes | None] | None = None
        self._single: dict[int, int] | None = None
        self._max_chars: int | None = None
        template = getattr(tokenizer, "chat_template", None)
        self.tool_family = tool_family(template if isinstance(template, str) else None)
        self._lltok: Any = None
        self._lltok_lock = threading.Lock()

    # -- tables --------------------------------------------------------------------------------

    def bytes_table(self) -> list[bytes | None]:
        """The raw bytes of every token id (None for special tokens)."""
        if self._bytes is None:
            table = token_bytes_table(self.tokenizer)
            single: dict[int, int] = {}
            for tid, raw in enumerate(table):
                if raw is not None and len(raw) == 1:
                    single.setdefault(raw[0], tid)
            self._single, self._bytes = single, table
        return self._bytes

    def single_byte(self) -> dict[int, int]:
        """byte value -> a token id that is exactly that byte."""
        self.bytes_table()
        assert self._single is not None
        return self._single

    def ll_tokenizer(self) -> Any:
        """The tokenizer as the grammar library sees it (built on first use, off the
        scheduler thread: constraints are compiled by request handlers)."""
        with self._lltok_lock:
            if self._lltok is None:
                from tuneforge.inference.constraint import ll_tokenizer

                self._lltok = ll_tokenizer(self.tokenizer, self.chat_stop_ids)
            return self._lltok

    def max_token_chars(self) -> int:
        """The most characters one token can stand for: a text of `k * max_token_chars()`
        characters has more than `k` tokens (a character is at least one byte, and special
        tokens match their own text)."""
        if self._max_chars is None:
            longest = max((len(raw) for raw in self.bytes_table() if raw), default=1)
            added = getattr(self.tokenizer, "added_tokens_decoder", {}).values()
            longest = max([longest, *(len(getattr(t, "content", "")) for t in added)])
            # Unicode composition (NFC / NFKC, e.g. Qwen's normalizer) can turn up to three
            # characters into one before tokenization: allow for it.
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            normalizer = repr(getattr(backend, "normalizer", None))
            if "NFC" in normalizer or "NFKC" in normalizer:
                longest *= 3
            self._max_chars = max(1, longest)
        return self._max_chars

    # -- text <-> ids --------------------------------------------------------------------------

    def prepare_chat(
        self, messages: list[dict], tools: list | None = None, max_chars: int | None = None
    ) -> list[int]:
        """Prompt ids for a chat, rendered with the model's own chat template.

        The template is rendered to text first (no tokenizer call) and text over `max_chars`
        is refused (`PromptTooLong`) before it is tokenized. Raises ValueError for messages
        the template cannot render.
        """
        from tuneforge.tokenize.templates import normalize_messages, render_text

        tokenizer = self.tokenizer
        try:
            (text,) = render_text([normalize_messages(messages)], tokenizer, tools, True)
        except ValueError:
            raise
        except Exception as err:  # jinja2 TemplateError and friends
            raise ValueError(f"the chat template cannot render these messages: {err}") from err
        check_length(text, max_chars)
        # As `render_prompt` (what training uses): templates write their own BOS.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str, max_chars: int | None = None) -> list[int]:
        """Token ids of `text`; over `max_chars` characters it is refused untokenized."""
        check_length(text, max_chars)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> tuple[str, bytes]:
        """(text, raw bytes) of one token, for logprobs."""
        raw = self.bytes_table()[token_id]
        if raw is None:
            text = self.tokenizer.convert_ids_to_tokens(token_id) or ""
            return text, text.encode("utf-8")
        return raw.decode("utf-8", errors="replace"), raw


def check_length(text: str, max_chars: int | None) -> None:
    """Raise `PromptTooLong` when `text` is over `max_chars` characters (None: no bound)."""
    if max_chars is not None and len(text) > max_chars:
        raise PromptTooLong(len(text), max_chars)
