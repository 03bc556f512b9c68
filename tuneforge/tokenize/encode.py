"""Turning one example into token ids and labels, with exactly the trained tokens marked.

Chat examples are rendered with the tokenizer's own chat template. The characters each trained
assistant message occupies are found by rendering prefixes of the conversation (the messages
before it with the generation prompt, then up to and including it) and checking that each is a
prefix of the full rendering. The full text is then tokenized once and the character spans
mapped to tokens through the offsets, so the ids are exactly what the model sees at inference.
No `{% generation %}` markers are needed, and the end-of-turn token that closes each trained
turn (`<|im_end|>`, `<|eot_id|>`, ...) is trained while the role header is not.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from tuneforge.data.io import detect_format
from tuneforge.data.lengths import preference_chats
from tuneforge.data.problems import preference_output
from tuneforge.tokenize.templates import normalize_messages, render_text

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "last_assistant", "all")
FORMATS = ("chat", "prompt_completion", "text")


class FormatMismatch(ValueError):
    """Examples of a format the objective does not train: preference examples for supervised
    fine-tuning (`found` "preference", `wanted` "supervised"), or others for preference
    tuning (`found` their format, `wanted` "dpo")."""

    def __init__(self, message: str, found: str, wanted: str):
        super().__init__(message)
        self.found, self.wanted = found, wanted

    def at(self, where: str) -> FormatMismatch:
        """The same mismatch, its message prefixed by where it was found ("file.jsonl:3")."""
        return FormatMismatch(f"{where}: {self}", self.found, self.wanted)


@dataclass
class Encoded:
    """One example as token ids plus labels.

    `labels[i]` is `input_ids[i]` where the token is a training target and `IGNORE_INDEX`
    elsewhere. Labels are not shifted (Hugging Face convention: the model's loss shifts them).
    `truncated` is True when `fit_length` cut the example.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        """How many tokens are training targets."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def _format_of(example: dict, format: str | None, preference: bool = False) -> str:
    if format is None:
        detected = detect_format(example)
        if detected is None:
            raise ValueError(
                "cannot tell the example's format: expected 'messages' (chat), "
                f"'prompt'/'completion' or 'text' keys, got {sorted(example)}"
            )
        format = str(detected)
    format = str(format.value if hasattr(format, "value") else format).replace("-", "_")
    if format == "preference" and not preference:
        raise FormatMismatch(
            "preference examples (input / preferred_output / non_preferred_output) are for "
            "preference tuning and cannot be trained by supervised fine-tuning; convert them to "
            "chat examples (input messages + preferred_output) or train with task 'dpo' "
            "(method.type 'dpo' in the fine-tuning API)",
            "preference",
            "supervised",
        )
    if format not in FORMATS and not (preference and format == "preference"):
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    return format


# Per tokenizer: whether plain-text tokenization adds a BOS token. Weak keys, so a tokenizer
# that is dropped is not kept alive by this cache.
_ADDS_BOS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _bos(tokenizer: Any) -> list[int]:
    """[bos_id] when the tokenizer adds BOS to plain text by default, else []."""
    try:
        adds = _ADDS_BOS[tokenizer]
    except (KeyError, TypeError):
        ids = tokenizer("", add_special_tokens=True)["input_ids"]
        bos_id = tokenizer.bos_token_id
        adds = bos_id is not None and bool(ids) and ids[0] == bos_id
        with contextlib.suppress(TypeError):  # a tokenizer that cannot be weakly referenced
            _ADDS_BOS[tokenizer] = adds
    return [tokenizer.bos_token_id] if adds else []


def _eos(tokenizer: Any, ids: list[int]) -> list[int]:
    """[eos_id] unless the ids already end with it (the data wrote it out): never a second EOS."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token")
    return [] if ids and ids[-1] == eos_id else [eos_id]


def _encode_text(example: dict, tokenizer: Any) -> Encoded:
    text = example.get("text")
    if not isinstance(text, str):
        raise ValueError("a text example needs a string 'text'")
    ids = _bos(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]
    ids += _eos(tokenizer, ids)
    return Encoded(ids, list(ids))


def _encode_prompt_completion(example: dict, tokenizer: Any, train_on: str) -> Encoded:
    prompt, completion = example.get("prompt"), example.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("a prompt-completion example needs string 'prompt' and 'completion'")
    # Tokenized separately, as at inference: the server tokenizes the prompt alone and the model
    # generates the completion's tokens after it.
    prompt_ids = _bos(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(completion, add_special_tokens=False)["input_ids"]
    target += _eos(tokenizer, target)
    ids = prompt_ids + target
    if train_on == "all":
        return Encoded(ids, list(ids))
    return Encoded(ids, [IGNORE_INDEX] * len(prompt_ids) + target)


def _trained_messages(messages: list[dict], train_on: str) -> list[int]:
    """Indices of the assistant messages whose tokens are trained."""
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if train_on == "last_assistant":
        assistant = assistant[-1:]
    # weight 0 (OpenAI's per-message switch) masks a message in every mode.
    return [i for i in assistant if messages[i].get("weight", 1) != 0]


_OPENING_HINT = (
    "An assistant message that opens the conversation has no prompt before it: give it "
    '"weight": 0 to keep it as context without training on it.'
)


def assistant_char_spans(
    messages: list[dict], tokenizer: Any, trained: Sequence[int], tools: list | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and find the character span of each trained assistant message.

    Returns the full rendered text and, for each index in `trained`, `(start, end)` into it:
    from the end of the generation prompt (the assistant header) to the end of the turn as the
    template writes it, trailing whitespace excluded (ChatML's "\\n" after `<|im_end|>`).
    Raises ValueError when the template does not render conversations as a series of prefixes,
    in which case no assistant turn can be located reliably.
    """
    msgs = normalize_messages(messages)
    # A trained final message ends where the full text does: it is not rendered twice.
    inner = [i for i in trained if i + 1 < len(msgs)]
    try:
        prefixes = render_text([msgs[:i] for i in trained], tokenizer, tools, True)
        rendered = render_text([msgs[: i + 1] for i in inner] + [msgs], tokenizer, tools, False)
    except TemplateError as e:
        raise ValueError(
            f"the chat template failed on a part of the conversation ({e}); "
            f"{_OPENING_HINT if trained and trained[0] == 0 else ''}"
        ) from e
    full = rendered[-1]
    ends = rendered[:-1] + ([full] if len(inner) < len(trained) else [])
    spans = []
    for i, prefix, end_text in zip(trained, prefixes, ends, strict=True):
        if not (end_text.startswith(prefix) and full.startswith(end_text)):
            raise ValueError(
                f"the chat template does not render message {i} (assistant) as a prefix of the "
                "conversation: the text before a reply changes when later messages are added, so "
                "the trained tokens cannot be located. Use a template that renders turns "
                f"append-only, or train_on='all'. {_OPENING_HINT if i == 0 else ''}"
            )
        end = len(end_text)
        while end > len(prefix) and end_text[end - 1].isspace():
            end -= 1
        spans.append((len(prefix), end))
    return full, spans


def _spans_to_labels(
    ids: list[int], offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Labels that train every token overlapping a character span (spans sorted, disjoint)."""
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= start:
            k += 1  # this span ends before the token: later tokens cannot overlap it either
        if k == len(spans):
            break
        if start < spans[k][1] and end > spans[k][0]:
            labels[t] = ids[t]
    return labels


def _encode_chat(example: dict, tokenizer: Any, train_on: str) -> Encoded:
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("a chat example needs a non-empty 'messages' list")
    tools = example.get("tools") or None
    if train_on == "all":
        (text,) = render_text([normalize_messages(messages)], tokenizer, tools, False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return Encoded(ids, list(ids))
    text, spans = assistant_char_spans(
        messages, tokenizer, _trained_messages(messages, train_on), tools
    )
    # The template writes its own BOS (if any) into the text: no special tokens are added, so
    # it is never doubled and the ids equal `apply_chat_template(..., tokenize=True)`.
    if getattr(tokenizer, "is_fast", False):
        out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = out["input_ids"]
        return Encoded(ids, _spans_to_labels(ids, out["offset_mapping"], spans))
    # Slow tokenizers give no offsets: tokenize the text piece by piece at the span boundaries.
    ids, labels, pos = [], [], 0
    for s, e in [*spans, (len(text), len(text))]:
        for piece, trained in ((text[pos:s], False), (text[s:e], True)):
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            ids += piece_ids
            labels += piece_ids if trained else [IGNORE_INDEX] * len(piece_ids)
        pos = e
    return Encoded(ids, labels)


def encode(
    example: dict, tokenizer: Any, train_on: str = "assistant", format: str | None = None
) -> Encoded:
    """Tokenize one example and mark the tokens to train on.

    Args:
        example: a chat (`messages`, optional `tools`), prompt-completion or text example.
        tokenizer: a Hugging Face tokenizer; chat examples need a chat template (see
            `ensure_chat_template`).
        train_on: for chat, "assistant" trains every assistant message whose `weight` is not 0,
            each with its end-of-turn token(s); "last_assistant" only the final assistant message;
            "all" every token. Prompt-completion trains the completion plus EOS ("all": the
            prompt too); text always trains every token plus EOS.
        format: "chat", "prompt_completion" or "text"; detected from the keys when None.

    Raises:
        ValueError: for preference examples, malformed examples, or a chat template whose
            renderings of successive turns are not prefixes of each other.

    Example:
        >>> enc = encode({"prompt": "2+2=", "completion": " 4"}, tokenizer)
        >>> enc.num_trained  # " 4" and EOS
        2
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"unknown train_on {train_on!r}; choose one of {', '.join(TRAIN_ON)}")
    if not isinstance(example, dict):
        raise ValueError(f"an example must be a JSON object, got {type(example).__name__}")
    fmt = _format_of(example, format)
    if fmt == "chat":
        return _encode_chat(example, tokenizer, train_on)
    if fmt == "prompt_completion":
        return _encode_prompt_completion(example, tokenizer, train_on)
    return _encode_text(example, tokenizer)


def encode_preference(example: dict, tokenizer: Any) -> tuple[Encoded, Encoded]:
    """A preference example as its two conversations: (chosen, rejected).

    Each is `input` + one reply, encoded exactly as supervised fine-tuning encodes a chat
    example (same template, same masks): only the reply's assistant tokens and their
    end-of-turn are trained; the prompt, including any assistant turns inside `input`, is not.

    Example:
        >>> chosen, rejected = encode_preference(
        ...     {"input": {"messages": [{"role": "user", "content": "Hi"}]},
        ...      "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        ...      "non_preferred_output": [{"role": "assistant", "content": "What?"}]},
        ...     tokenizer)
    """
    if not isinstance(example, dict):
        raise ValueError(f"an example must be a JSON object, got {type(example).__name__}")
    fmt = _format_of(example, None, preference=True)
    if fmt != "preference":
        raise FormatMismatch(
            "preference tuning (DPO) needs preference examples (input / preferred_output / "
            f"non_preferred_output), not {fmt} examples; train them with task 'causal_lm' "
            "(method.type 'supervised' in the fine-tuning API)",
            fmt,
            "dpo",
        )
    inp = example.get("input")
    if (
        not isinstance(inp, dict)
        or not isinstance(inp.get("messages"), list)
        or not inp["messages"]
    ):
        raise ValueError("a preference example needs `input.messages`, a non-empty list")
    for side in ("preferred", "non_preferred"):
        key, value = preference_output(example, side)
        if not (isinstance(value, str) or (isinstance(value, list) and value)):
            raise ValueError(f"a preference example needs `{key}`, a non-empty list of messages")
    chats = preference_chats(example)
    n_prompt = len(inp["messages"])
    out = []
    for chat in chats:
        # The prompt's own assistant turns are context (weight 0): only the reply trains.
        messages = [
            {**m, "weight": 0} if i < n_prompt and m.get("role") == "assistant" else m
            for i, m in enumerate(chat["messages"])
        ]
        out.append(_encode_chat({**chat, "messages": messages}, tokenizer, "assistant"))
    return out[0], out[1]


FIT_POLICIES = ("drop", "truncate")


def fit_length(enc: Encoded, max_length: int, policy: str = "drop") -> Encoded | None:
    """Make `enc` fit in `max_length` tokens, or return None to drop it.

    "drop": None when too long. "truncate": keep the first `max_length` tokens and set
    `truncated=True` (a trained span may be cut mid-way: count `truncated` to report it); None
    when no trained token is left. Examples that fit are returned unchanged.
    """
    if policy not in FIT_POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(FIT_POLICIES)}")
    if max_length < 1:
        raise ValueError("max_length must be at least 1")
    if len(enc) <= max_length:
        return enc
    if policy == "drop":
        return None
    cut = Encoded(enc.input_ids[:max_length], enc.labels[:max_length], truncated=True)
    return cut if cut.num_trained else None


def token_view(enc: Encoded, tokenizer: Any) -> list[tuple[str, bool]]:
    """(text, trained?) per token, for showing an example as the model sees it.

    Tokens that decode to an incomplete character on their own (a multi-byte character split by
    byte-level BPE) are merged with the following ones; a merged piece counts as trained if any
    of its tokens is.
    """
    pieces: list[tuple[str, bool]] = []
    pending: list[int] = []
    pending_trained = False
    for token_id, label in zip(enc.input_ids, enc.labels, strict=True):
        pending.append(token_id)
        pending_trained = pending_trained or label != IGNORE_INDEX
        text = tokenizer.decode(pending, skip_special_tokens=False)
        if text.endswith("\ufffd") and len(pending) < 4:
            continue
        pieces.append((text, pending_trained))
        pending, pending_trained = [], False
    if pending:
        pieces.append((tokenizer.decode(pending, skip_special_tokens=False), pending_trained))
    return pieces
