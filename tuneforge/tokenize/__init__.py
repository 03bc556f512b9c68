"""Tokenization: chat templates, label masks, truncation, packing and batching.

Example:
    >>> ensure_chat_template(tokenizer)
    >>> encs = [fit_length(encode(ex, tokenizer), 1024, "truncate") for ex in examples]
    >>> encs = [e for e in encs if e is not None]
    >>> bins = pack([len(e) for e in encs], seq_len=1024)
    >>> batch = collate_packed(encs, bins[:8], 1024, tokenizer.pad_token_id)
    >>> loss = model(**batch).loss
"""

from tuneforge.tokenize.batching import (
    block_causal_mask,
    collate_packed,
    collate_padded,
    length_grouped_batches,
    pack,
    padding_fraction,
)
from tuneforge.tokenize.encode import (
    IGNORE_INDEX,
    Encoded,
    FormatMismatch,
    assistant_char_spans,
    encode,
    encode_preference,
    fit_length,
    token_view,
)
from tuneforge.tokenize.templates import (
    DEFAULT_CHAT_TEMPLATE,
    ensure_chat_template,
    normalize_messages,
    render_prompt,
)

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "Encoded",
    "FormatMismatch",
    "assistant_char_spans",
    "block_causal_mask",
    "collate_packed",
    "collate_padded",
    "encode",
    "encode_preference",
    "ensure_chat_template",
    "fit_length",
    "length_grouped_batches",
    "normalize_messages",
    "pack",
    "padding_fraction",
    "render_prompt",
    "token_view",
]
