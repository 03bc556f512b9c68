"""Hold-out examples for evaluation: what the model is scored on, and what it is prompted with.

Each example is encoded exactly as training encodes it (`tokenize.encode`, the model's own
`train_on`), which gives the likelihood metrics training's masking. The generation prompt is the
conversation up to its last assistant message, rendered by the chat template as serving renders
it (`render_prompt`); that message's content is the reference. Prompt-completion examples are
prompted with their prompt tokens (as `encode` tokenizes them) and scored against the completion.
Plain-text examples have no reference: they only get likelihood metrics. A preference example
is its input with the preferred reply (the reference, scored and prompted like a chat example)
plus the non-preferred reply, scored too (`rejected`), both encoded as preference tuning
encodes them (`tokenize.encode_preference`): the pair's log-probabilities give the preference
accuracy and, against a reference model, DPO's reward accuracy and margin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.io import detect_format
from tuneforge.evaluation.loading import EvalError
from tuneforge.tokenize import (
    IGNORE_INDEX,
    Encoded,
    encode,
    encode_preference,
    fit_length,
    render_prompt,
)
from tuneforge.training.data import read_examples


@dataclass
class EvalExample:
    """One hold-out example, ready for likelihood and generation."""

    line: int  # in the hold-out file
    format: str
    encoded: Encoded | None  # None when it has no trained token (nothing to score)
    prompt_ids: list[int] | None  # None when there is nothing to generate (text, no reference)
    prompt: str  # the last user turn or the prompt, for the report
    reference: str | None
    rejected: Encoded | None = None  # a preference example's non-preferred conversation


def read_holdout(
    path: str | Path,
    tokenizer: Any,
    train_on: str = "assistant",
    max_length: int = 2048,
    limit: int | None = None,
    expected_format: str | None = None,
) -> list[EvalExample]:
    """Read and encode a hold-out file (JSONL, CSV, Parquet, text, as training reads them).

    Over-long examples are truncated to `max_length` tokens for the likelihood (never dropped:
    dropping would flatter the model). Raises EvalError for an unreadable or empty file, mixed
    formats, or a format other than `expected_format` (the training data's; chat and preference
    data count as one: both are conversations).
    """
    try:
        rows = read_examples(path)
    except ValueError as e:
        raise EvalError(str(e)) from None
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise EvalError(f"{path}: the hold-out file has no examples")
    formats: dict[str, int] = {}
    for line, row in rows:
        fmt = detect_format(row)
        if fmt is None:
            raise EvalError(
                f"{path}:{line}: cannot tell the example's format (keys {sorted(row)}); expected "
                "'messages', 'prompt'/'completion' or 'text'"
            )
        formats.setdefault(str(fmt), line)
    if len(formats) > 1:
        seen = ", ".join(f"{fmt} (first at line {line})" for fmt, line in formats.items())
        raise EvalError(f"{path}: the hold-out file mixes formats: {seen}; use one format")
    (fmt,) = formats
    conversations = {"chat", "preference"}
    same = fmt == expected_format or {fmt, expected_format} <= conversations
    if expected_format is not None and not same:
        raise EvalError(
            f"{path}: the hold-out file holds {fmt} examples but the model was trained on "
            f"{expected_format} examples; evaluate on hold-out data in the training format"
        )
    out = []
    for line, row in rows:
        try:
            out.append(_example(line, row, fmt, tokenizer, train_on, max_length))
        except ValueError as e:
            raise EvalError(f"{path}:{line}: {e}") from None
    if all(e.encoded is None and e.prompt_ids is None for e in out):
        raise EvalError(f"{path}: no example has a reply to score")
    return out


def _preference_example(line: int, row: dict, tokenizer: Any, max_length: int) -> EvalExample:
    chosen, rejected = encode_preference(row, tokenizer)
    fitted = [fit_length(e, max_length, "truncate") for e in (chosen, rejected)]
    scored = fitted[0] is not None and fitted[1] is not None
    messages = row["input"]["messages"]
    prompt_ids = render_prompt(messages, tokenizer, row["input"].get("tools") or None)
    if len(prompt_ids) >= max_length:
        prompt_ids = prompt_ids[-(max_length - 1) :]
    preferred = row.get("preferred_output", row.get("preferred_completion"))
    if isinstance(preferred, list):
        preferred = _join(preferred[-1].get("content")) if preferred else ""
    users = [m for m in messages if m.get("role") == "user"]
    return EvalExample(
        line,
        "preference",
        fitted[0] if scored else None,
        prompt_ids,
        _join(users[-1].get("content")) if users else "",
        preferred if isinstance(preferred, str) else "",
        fitted[1] if scored else None,
    )


def _example(
    line: int, row: dict, fmt: str, tokenizer: Any, train_on: str, max_length: int
) -> EvalExample:
    if fmt == "preference":
        return _preference_example(line, row, tokenizer, max_length)
    enc = encode(row, tokenizer, train_on=train_on, format=fmt)
    fitted = fit_length(enc, max_length, "truncate") if enc.num_trained else None
    prompt_ids = reference = None
    prompt = ""
    if fmt == "chat":
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
        if last > 0:
            content = messages[last].get("content")
            prompt_ids = render_prompt(messages[:last], tokenizer, row.get("tools") or None)
            reference = content if isinstance(content, str) else _join(content)
            users = [m for m in messages[:last] if m.get("role") == "user"]
            prompt = _join(users[-1].get("content")) if users else ""
    elif fmt == "prompt_completion":
        # The prompt's tokens are the masked head of the encoding (BOS + prompt, as serving
        # tokenizes a prompt): from `encode`, so training and evaluation cannot disagree.
        full = encode(row, tokenizer, train_on="assistant", format=fmt)
        n_prompt = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
        prompt_ids = full.input_ids[:n_prompt]
        prompt, reference = row["prompt"], row["completion"]
    if prompt_ids is not None and len(prompt_ids) >= max_length:
        prompt_ids = prompt_ids[-(max_length - 1) :]  # keep the end: the question is there
    return EvalExample(line, fmt, fitted, prompt_ids, prompt, reference)


def _join(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return json.dumps(content)


def read_general(path: str | Path, tokenizer: Any, window: int = 1024) -> list[Encoded]:
    """General reference text for the forgetting check, as windows of at most `window` tokens.

    Any format is accepted; every token is scored (`train_on="all"`). Long texts are cut into
    consecutive windows so each token is scored once.
    """
    try:
        rows = read_examples(path)
    except ValueError as e:
        raise EvalError(str(e)) from None
    out: list[Encoded] = []
    for line, row in rows:
        try:
            enc = encode(row, tokenizer, train_on="all")
        except ValueError as e:
            raise EvalError(f"{path}:{line}: {e}") from None
        for start in range(0, len(enc), window):
            ids = enc.input_ids[start : start + window]
            if len(ids) > 1:
                out.append(Encoded(ids, list(ids)))
    if not out:
        raise EvalError(f"{path}: the general text file has no text")
    return out


def training_format(manifest: dict[str, Any]) -> str | None:
    """The format of the data a TuneForge model was trained on (its first example), if known."""
    train = (manifest.get("data") or {}).get("train") or {}
    path = Path(train.get("path", "")) if train.get("path") else None
    if path is None or not path.is_file() or path.suffix.lower() not in ("", ".jsonl", ".json"):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    fmt = detect_format(json.loads(line))
                    return str(fmt) if fmt is not None else None
    except (OSError, ValueError):
        return None
    return None
