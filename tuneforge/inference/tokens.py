"""Token ids -> text for streaming: raw token bytes, incremental detokenization, stop strings.

- `token_bytes_table(tokenizer)`: the exact bytes each token stands for (byte-level BPE as in
  GPT-2/Qwen/Llama 3, or SentencePiece with `<0xNN>` byte fallback as in Llama 2 / Mistral);
  None for special tokens. Used by logprobs (`bytes`) and JSON-constrained decoding.
- `IncrementalDetokenizer`: new text after each token, never splitting a UTF-8 character
  across deltas (a token holding half of "é" yields nothing until the other half arrives),
  and with the spacing the tokenizer's own `decode` produces.
- `StopMatcher`: cuts text at the first stop string, even when the string spans several
  tokens, and holds back any tail that could still become a stop string.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes_table(tokenizer: Any) -> list[bytes | None]:
    """The bytes of every token id (None for special tokens)."""
    size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = set(tokenizer.all_special_ids)
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            special.add(tid)
    byte_level = _is_byte_level(tokenizer)
    decoder = _byte_decoder()
    table: list[bytes | None] = []
    for tid, piece in enumerate(pieces):
        if piece is None or tid in special:
            table.append(None)
            continue
        if byte_level and all(c in decoder for c in piece):
            table.append(bytes(decoder[c] for c in piece))
            continue
        match = _BYTE_TOKEN.match(piece)
        if match:
            table.append(bytes([int(match.group(1), 16)]))
        else:
            table.append(piece.replace("▁", " ").encode("utf-8"))
    return table


class IncrementalDetokenizer:
    """Text deltas for a growing list of token ids (the approach of TGI and vLLM).

    The last few prompt tokens are kept as context so a leading-space token decodes with its
    space. Text is released only once it no longer ends in an incomplete UTF-8 character.
    """

    CONTEXT = 4

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-self.CONTEXT :])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (maybe "")."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


class StopMatcher:
    """Finds stop strings in streamed text; releases only text that cannot start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""  # all text seen
        self.released = 0  # characters of `text` already handed out

    def add(self, delta: str) -> tuple[str, bool]:
        """Feed new text; return (text safe to emit now, whether a stop string was hit)."""
        if not self.stops:
            self.text += delta
            self.released = len(self.text)
            return delta, False
        start = max(0, len(self.text) - self.longest + 1)
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            out = self.text[self.released : cut] if cut > self.released else ""
            self.released = len(self.text)
            return out, True
        hold = 0
        for k in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                hold = k
                break
        end = max(self.released, len(self.text) - hold)
        out = self.text[self.released : end]
        self.released = end
        return out, False

    def flush(self) -> str:
        """The held-back tail, when generation ends for another reason."""
        out = self.text[self.released :]
        self.released = len(self.text)
        return out
