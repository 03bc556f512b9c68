"""Dataset statistics: sizes per example, tokens against the context, and what training costs.

With a tokenizer, every valid example is encoded exactly as training encodes it
(`tuneforge.tokenize.encode`: the model's chat template, the label mask of `train_on`), so the
token counts, the trained / masked split and the examples over the context limit are the ones
training will see. Without a tokenizer only message, turn and character counts are given: token
counts need the model's tokenizer.

The epoch count is the one OpenAI's "auto" setting picks (`auto_epochs`), and the estimated
training tokens are the dataset's tokens times those epochs (what OpenAI bills).

Example:
    >>> report = dataset_stats("train.jsonl", tokenizer=load_tokenizer("Qwen/Qwen2.5-0.5B"))
    >>> report.tokens.median, report.epochs, report.training_tokens
    (212, 3, 190800)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.clean import paused_gc
from tuneforge.data.io import Format, parse_format, read_dataset
from tuneforge.data.validate import validate_example

# OpenAI's "auto" epochs: 3, unless the dataset is so small or so large that the number of
# examples seen should be pulled into [MIN_EXAMPLES_SEEN, MAX_EXAMPLES_SEEN].
DEFAULT_EPOCHS = 3
MIN_EXAMPLES_SEEN = 100
MAX_EXAMPLES_SEEN = 25_000
MAX_EPOCHS = 25
# A tokenizer's `model_max_length` above this is the "no limit" sentinel, not a context size.
_NO_LIMIT = 10_000_000


def auto_epochs(n_examples: int) -> int:
    """The epoch count OpenAI's "auto" picks for `n_examples` examples.

    3 by default; for tiny datasets more, so that n_examples * epochs >= 100 (at most 25); for
    huge ones fewer, so that n_examples * epochs <= 25,000 (at least 1).

    Example:
        >>> auto_epochs(10), auto_epochs(1000), auto_epochs(20000)
        (10, 3, 1)
    """
    n = max(1, n_examples)
    if n * DEFAULT_EPOCHS < MIN_EXAMPLES_SEEN:
        return min(MAX_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / n))
    if n * DEFAULT_EPOCHS > MAX_EXAMPLES_SEEN:
        return max(1, MAX_EXAMPLES_SEEN // n)
    return DEFAULT_EPOCHS


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank `p`-th percentile of sorted values: the smallest value with at least p%
    of the values at or below it."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    """min / p10 / median / p90 / max, mean and total of one per-example quantity."""

    min: float
    p10: float
    median: float
    p90: float
    max: float
    mean: float
    total: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        """The summary of `values` (None when empty). Percentiles are nearest-rank; the median
        of an even count is the mean of the two middle values."""
        if not values:
            return None
        ordered = sorted(values)
        return cls(
            min=ordered[0],
            p10=percentile(ordered, 10),
            median=statistics.median(ordered),
            p90=percentile(ordered, 90),
            max=ordered[-1],
            mean=sum(ordered) / len(ordered),
            total=sum(ordered),
        )

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "mean": round(self.mean, 2)}


@dataclass
class StatsReport:
    """Statistics of the valid examples of one dataset."""

    path: str
    format: str | None
    examples: int
    """Valid examples (those training would use)."""
    skipped: int
    """Records not counted: unreadable lines and examples with an error (`data check` lists them)."""
    messages: Summary | None
    """Messages per example (chat and preference data)."""
    assistant_turns: Summary | None
    """Assistant messages per example (chat and preference data)."""
    characters: Summary | None
    """Characters of text per example."""
    epochs: int
    """What OpenAI's "auto" epochs would pick for this many examples."""
    tokens: Summary | None = None
    """Tokens per example, with the model's tokenizer and chat template (None without one)."""
    trained_tokens: int | None = None
    """Tokens training learns from (labels), over the whole dataset, one epoch."""
    masked_tokens: int | None = None
    """Tokens the model reads but does not learn (prompts, system and user turns)."""
    train_on: str | None = None
    limit: int | None = None
    """The context limit checked against: --max-tokens or the model's maximum."""
    over_limit: int | None = None
    """Examples longer than `limit` (training truncates or drops them)."""
    failed: int = 0
    """Valid examples the tokenizer or chat template could not encode."""

    @property
    def training_tokens(self) -> int | None:
        """Estimated tokens processed in training: the dataset's tokens times `epochs`."""
        return None if self.tokens is None else int(self.tokens.total) * self.epochs

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""

        def summary(s: Summary | None) -> dict[str, float] | None:
            return None if s is None else s.to_dict()

        return {
            "path": self.path,
            "format": self.format,
            "examples": self.examples,
            "skipped": self.skipped,
            "messages": summary(self.messages),
            "assistant_turns": summary(self.assistant_turns),
            "characters": summary(self.characters),
            "tokens": summary(self.tokens),
            "trained_tokens": self.trained_tokens,
            "masked_tokens": self.masked_tokens,
            "train_on": self.train_on,
            "limit": self.limit,
            "over_limit": self.over_limit,
            "failed": self.failed,
            "epochs": self.epochs,
            "training_tokens": self.training_tokens,
        }


def _messages_of(example: dict, fmt: Format) -> list[dict]:
    """The conversation an example trains on (a preference example: input + preferred output)."""
    if fmt is Format.CHAT:
        return example["messages"]
    if fmt is Format.PREFERENCE:
        preferred = example.get("preferred_output", example.get("preferred_completion"))
        if isinstance(preferred, str):
            preferred = [{"role": "assistant", "content": preferred}]
        return [*example["input"]["messages"], *preferred]
    return []


def _text_length(example: dict, messages: list[dict], fmt: Format) -> int:
    if messages:
        total = 0
        for m in messages:
            content = m.get("content")
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
        return total
    if fmt is Format.PROMPT_COMPLETION:
        return len(example["prompt"]) + len(example["completion"])
    return len(example.get("text", ""))


def _encodable(example: dict, messages: list[dict], fmt: Format) -> tuple[dict, str]:
    """(example, format) as `encode` takes it; a preference example becomes its chat."""
    if fmt is Format.PREFERENCE:
        chat: dict[str, Any] = {"messages": messages}
        tools = example["input"].get("tools")
        if tools:
            chat["tools"] = tools
        return chat, "chat"
    return example, fmt.value


def dataset_stats(
    path: str | Path,
    *,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    train_on: str = "assistant",
    format: Format | str | None = None,
) -> StatsReport:
    """Statistics of the valid examples in `path`; token counts when `tokenizer` is given.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template (see
            `tuneforge.tokenize.inspect.load_tokenizer`), or None for counts without tokens.
        max_tokens: the context limit to count over-long examples against; defaults to the
            tokenizer's `model_max_length` when that is a real limit.
        train_on: which tokens are trained, as in training: assistant, last_assistant or all.
    """
    from tuneforge.tokenize.encode import TRAIN_ON

    if train_on not in TRAIN_ON:
        raise ValueError(f"unknown train_on {train_on!r}; choose one of {', '.join(TRAIN_ON)}")
    with paused_gc():
        fmt = parse_format(format) if format is not None else None
        loaded = read_dataset(path, fmt)
        fmt = loaded.format
        examples: list[dict] = []
        if fmt is not None:
            for line, example in loaded.examples():
                if not any(p.severity == "error" for p in validate_example(example, fmt, line)):
                    examples.append(example)
    n_messages: list[int] = []
    n_assistant: list[int] = []
    chars: list[int] = []
    conversations: list[list[dict]] = []
    for example in examples:
        messages = _messages_of(example, fmt) if fmt is not None else []
        conversations.append(messages)
        if fmt in (Format.CHAT, Format.PREFERENCE):
            n_messages.append(len(messages))
            n_assistant.append(sum(1 for m in messages if m.get("role") == "assistant"))
        chars.append(_text_length(example, messages, fmt) if fmt is not None else 0)
    report = StatsReport(
        path=str(path),
        format=None if fmt is None else fmt.value,
        examples=len(examples),
        skipped=len(loaded.records) - len(examples),
        messages=Summary.of(n_messages),
        assistant_turns=Summary.of(n_assistant),
        characters=Summary.of(chars),
        epochs=auto_epochs(len(examples)),
    )
    if tokenizer is None or fmt is None:
        return report

    from tuneforge.tokenize.encode import encode
    from tuneforge.tokenize.templates import ensure_chat_template

    if fmt in (Format.CHAT, Format.PREFERENCE):
        ensure_chat_template(tokenizer)
    lengths: list[int] = []
    trained = failed = 0
    for example, messages in zip(examples, conversations, strict=True):
        encodable, encode_format = _encodable(example, messages, fmt)
        try:
            enc = encode(encodable, tokenizer, train_on=train_on, format=encode_format)
        except ValueError:
            failed += 1
            continue
        lengths.append(len(enc))
        trained += enc.num_trained
    limit = max_tokens
    if limit is None:
        model_max = getattr(tokenizer, "model_max_length", None)
        limit = model_max if isinstance(model_max, int) and 0 < model_max < _NO_LIMIT else None
    report.tokens = Summary.of(lengths)
    report.trained_tokens = trained
    report.masked_tokens = sum(lengths) - trained
    report.train_on = train_on
    report.limit = limit
    report.over_limit = sum(1 for n in lengths if n > limit) if limit is not None else None
    report.failed = failed
    return report


def print_stats_report(report: StatsReport, console: Any) -> None:
    """Print `report` with Rich: one row per quantity (min / p10 / median / p90 / max / total)."""
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[bold]{escape(report.path)}[/bold]: {report.examples:,} valid {report.format or ''} "
        f"examples"
        + (f", {report.skipped:,} skipped (see `tuneforge data check`)" if report.skipped else "")
    )
    table = Table(header_style="bold")
    for column in ("per example", "min", "p10", "median", "p90", "max", "total"):
        table.add_column(column, justify="left" if column == "per example" else "right")
    rows = [
        ("messages", report.messages),
        ("assistant turns", report.assistant_turns),
        ("characters", report.characters),
        ("tokens", report.tokens),
    ]
    for name, s in rows:
        if s is not None:
            cells = (s.min, s.p10, s.median, s.p90, s.max, s.total)
            table.add_row(name, *(f"{v:,.0f}" if v == int(v) else f"{v:,.1f}" for v in cells))
    console.print(table)
    if report.tokens is None:
        console.print("[dim]token counts need the model's tokenizer: pass --model[/dim]")
    else:
        console.print(
            f"tokens trained / masked ({report.train_on}): {report.trained_tokens:,} / "
            f"{report.masked_tokens:,}"
        )
        if report.limit is not None:
            colour = "red" if report.over_limit else "green"
            console.print(
                f"over the {report.limit:,}-token limit: [{colour}]{report.over_limit:,}[/{colour}]"
            )
        if report.failed:
            console.print(f"[yellow]{report.failed:,} example(s) could not be encoded[/yellow]")
    line = f"epochs (OpenAI's auto rule): {report.epochs}"
    if report.training_tokens is not None:
        line += f"; estimated training tokens: {report.training_tokens:,} (tokens x epochs)"
    console.print(line)
