"""Dataset statistics: sizes per example, tokens against the context, and what training costs.

With a token counter (`tuneforge.tokenize.measure.token_counter`, passed in by the caller: this
layer imports no tokenizer), every valid example is encoded exactly as training encodes it (the
model's chat template, the label mask of `train_on`), so the token counts, the trained / masked
split and the examples over the context limit are the ones training will see. Without one only
message, turn and character counts are given. A preference example is measured by its longer
conversation (`tuneforge.data.lengths.measured`), as `data check` and `data clean` measure it.

The epoch count is the one OpenAI's "auto" setting picks (`auto_epochs`), and the estimated
training tokens are the dataset's tokens times those epochs (what OpenAI bills).

Example:
    >>> report = dataset_stats("train.jsonl", count=token_counter(load_tokenizer("Qwen/Qwen2.5-0.5B")))
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

from tuneforge.auto import auto_epochs
from tuneforge.data.checks import validate_example
from tuneforge.data.io import Format, parse_format, paused_gc, read_dataset
from tuneforge.data.lengths import TokenCount, characters, measured


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


def _conversation(example: dict, fmt: Format) -> tuple[dict, Format]:
    """The example as it is measured: a preference example by its longer conversation."""
    return measured(example, fmt, lambda e, f: (characters(e, f), e, f), key=lambda t: t[0])[1:]


def dataset_stats(
    path: str | Path,
    *,
    count: TokenCount | None = None,
    max_tokens: int | None = None,
    train_on: str = "assistant",
    format: Format | str | None = None,
) -> StatsReport:
    """Statistics of the valid examples in `path`; token counts when `count` is given.

    Args:
        count: (tokens, trained tokens) of one example as training encodes it (see
            `tuneforge.tokenize.measure.token_counter`), or None for counts without tokens.
        max_tokens: the context limit to count over-long examples against (None: no limit;
            `tuneforge.tokenize.measure.context_limit` gives the model's).
        train_on: which tokens `count` trains (assistant, last_assistant or all), as reported.
    """
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
    for example in examples:
        assert fmt is not None
        measured_as, measured_fmt = _conversation(example, fmt)
        if measured_fmt is Format.CHAT:
            messages = measured_as["messages"]
            n_messages.append(len(messages))
            n_assistant.append(sum(1 for m in messages if m.get("role") == "assistant"))
        chars.append(characters(measured_as, measured_fmt))
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
    if count is None or fmt is None:
        return report

    lengths: list[int] = []
    trained = failed = 0
    for example in examples:
        try:
            n, n_trained = measured(example, fmt, count, key=lambda t: t[0])
        except ValueError:
            failed += 1
            continue
        lengths.append(n)
        trained += n_trained
    limit = max_tokens
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
