"""Grammar-constrained decoding: `response_format` json_schema and forced tool calls.

A request may carry a `Constraint`: a grammar compiled by llguidance (chosen by measurement,
see docs/structured-outputs.md) against the model's tokenizer. Each choice being generated
gets its own matcher (`Constraint.matcher()`, a cheap copy of the compiled one); at every
decode step the matcher gives the set of allowed next tokens as a bitmask (computed in Rust,
tens of microseconds per row even on a 152k vocabulary), which `allowed_rows` unpacks into
a boolean mask so the decoder can set every other logit to -inf before sampling. The chosen
token is then committed to the matcher. Rows without a constraint pay nothing, and a
constrained row never needs a redraw or a pass over the vocabulary in Python, so
constrained and free rows share a batch without stalling it.

Grammars are compiled off the scheduler thread (in the request handler, `compile_grammar`),
and a grammar the library refuses is a `ValueError` with its reason (a 400 for the client).

Example:
    >>> constraint = compile_grammar(vocab, json_schema_grammar({"type": "object"}))
    >>> matcher = constraint.matcher()
    >>> mask = allowed_rows([matcher], vocab_size=len(vocab.tokenizer), width=logits.shape[-1])
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

MAX_SCHEMA_CHARS = 64 * 1024  # a JSON schema (or the tools' schemas) larger than this is refused


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """The grammar of one JSON value matching `schema` (compact: no free whitespace, so a
    model cannot spend its token budget on blank lines)."""
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False}, overrides={"lenient": False}
    )


def json_object_grammar() -> str:
    """Any JSON object."""
    return json_schema_grammar({"type": "object"})


def lark_grammar(lark: str) -> str:
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_lark(lark)


def ll_tokenizer(tokenizer: Any, stop_ids: tuple[int, ...]) -> Any:
    """llguidance's view of a Hugging Face fast tokenizer; `stop_ids` end a reply (the
    grammar allows them once the text is complete). About a second: build once per model."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, eos_token=list(stop_ids) or None)


class Constraint:
    """One request's compiled grammar; each choice decodes with its own `matcher()`."""

    def __init__(self, matcher: Any) -> None:
        self._compiled = matcher

    def matcher(self) -> Any:
        return self._compiled.deep_copy()


def compile_grammar(lltok: Any, grammar: str) -> Constraint:
    """Compile `grammar` for a tokenizer (call off the scheduler thread). ValueError when the
    library refuses it (an unsupported schema keyword, a malformed grammar), with its reason."""
    from llguidance import LLMatcher

    matcher = LLMatcher(lltok, grammar, log_level=0)
    if matcher.is_error():
        reason = matcher.get_error().splitlines()[0] if matcher.get_error() else "invalid"
        raise ValueError(reason[:300])
    return Constraint(matcher)


def check_schema_size(value: Any, what: str) -> None:
    if len(json.dumps(value)) > MAX_SCHEMA_CHARS:
        raise ValueError(f"{what} is larger than {MAX_SCHEMA_CHARS} characters")


def allowed_rows(matchers: list[Any], vocab_size: int, width: int) -> torch.Tensor:
    """(k, width) bool: the tokens each matcher allows next (False beyond the tokenizer's
    vocabulary, for models whose logits are padded wider)."""
    # One bit per token of the grammar's view of the vocabulary (which may count a few more
    # ids than the tokenizer's length); columns past `vocab_size` stay False.
    packed = np.stack([np.frombuffer(m.compute_bitmask(), dtype=np.uint8) for m in matchers])
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : min(vocab_size, width)]
    mask = torch.zeros((len(matchers), width), dtype=torch.bool)
    mask[:, : bits.shape[1]] = torch.from_numpy(bits.astype(np.bool_))
    return mask


__all__ = [
    "Constraint",
    "allowed_rows",
    "compile_grammar",
    "json_object_grammar",
    "json_schema_grammar",
    "lark_grammar",
    "ll_tokenizer",
]
