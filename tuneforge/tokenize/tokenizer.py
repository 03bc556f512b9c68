"""Loading a tokenizer ready for chat fine-tuning, and finding where its replies end.

Every tokenizer TuneForge uses (training, evaluation, serving, `tokens` inspection) comes
from `load_tokenizer`, so every one has the same pad token and chat template. Where a reply
ends is decided by `end_of_turn_ids`: the token the chat template closes an assistant turn
with, found the way training finds it (the last trained token of an encoded conversation).

Example:
    >>> tok = load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct")
    >>> end_of_turn_ids(tok)  # [<|im_end|>]
    [151645]
"""

from __future__ import annotations

from typing import Any

from tuneforge.tokenize.encode import IGNORE_INDEX, encode
from tuneforge.tokenize.templates import ensure_chat_template


def ensure_pad_token(tokenizer: Any, name: str = "tokenizer") -> Any:
    """Give a tokenizer without a pad token its EOS (or UNK) token as pad; return it.

    Padding positions are masked out of attention and loss, so reusing EOS is safe.

    Raises:
        ValueError: the tokenizer has no pad, eos or unk token.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(f"{name}: tokenizer has no pad, eos or unk token")
        tokenizer.pad_token = fallback
    return tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer of a model folder or Hub id, ready to encode chats.

    A tokenizer without a pad token gets its EOS (or UNK) token as pad; one without a chat
    template gets the ChatML default (adding `<|im_start|>` / `<|im_end|>` to a vocabulary
    that lacks them: resize the model's embeddings to `len(tokenizer)`).

    Raises:
        OSError: no tokenizer at `name_or_path`.
        ValueError: the tokenizer has no pad, eos or unk token.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code
    )
    ensure_pad_token(tokenizer, str(name_or_path))
    ensure_chat_template(tokenizer)
    return tokenizer


def is_special(tokenizer: Any, token_id: int) -> bool:
    """A special token: a named one (eos, pad, ...) or an added token marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(token_id)
    return token_id in tokenizer.all_special_ids or bool(added is not None and added.special)


_PROBE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The token the chat template ends an assistant turn with, as a list (empty if none).

    It is the last trained token of an encoded one-turn conversation (`<|im_end|>` for
    ChatML, `<|eot_id|>` for Llama 3), kept when it is a special token: a template that ends
    a turn with plain text (or cannot be probed) gives none, and EOS alone must stop.
    """
    if not getattr(tokenizer, "chat_template", None):
        return []
    try:
        enc = encode(_PROBE, tokenizer, train_on="last_assistant")
    except ValueError:
        return []  # a template that cannot be probed
    trained = [
        t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE_INDEX
    ]
    return [trained[-1]] if trained and is_special(tokenizer, trained[-1]) else []


def stop_ids(tokenizer: Any, eos_token_id: int | list[int] | None = None) -> list[int]:
    """Token ids that end a reply: the tokenizer's EOS, `eos_token_id` (a model's generation
    config may name more), then the end-of-turn token; without duplicates, in that order."""
    ids: list[int] = []
    for value in (tokenizer.eos_token_id, eos_token_id):
        ids += value if isinstance(value, list) else [value] if value is not None else []
    ids += end_of_turn_ids(tokenizer)
    return list(dict.fromkeys(ids))
