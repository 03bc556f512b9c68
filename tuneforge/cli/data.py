"""`tuneforge data ...`: check, inspect, clean, split and stats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tuneforge.cli.common import console, err_console, fail, load_tokenizer_or_exit

data_app = typer.Typer(help="Check, clean, split and inspect datasets.", no_args_is_help=True)

_FORMAT_HELP = "chat, prompt_completion, preference or text (default: detected)."


@data_app.command("check")
def data_check(
    file: Path = typer.Argument(
        ..., help="The dataset: JSONL, a JSON array, TXT, CSV, TSV or Parquet."
    ),
    format: str | None = typer.Option(None, "--format", help=_FORMAT_HELP),
    model: str | None = typer.Option(
        None, "--model", help="Model folder or Hub id whose tokenizer counts tokens (no weights)."
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Context length to check against (default: the model's)."
    ),
    prompt_col: str | None = typer.Option(None, "--prompt-col", help="Table column of prompts."),
    completion_col: str | None = typer.Option(
        None, "--completion-col", help="Table column of completions."
    ),
    text_col: str | None = typer.Option(None, "--text-col", help="Table column of plain text."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON report on stdout."),
    limit: int = typer.Option(50, "--limit", min=0, help="How many problems to list (0: all)."),
) -> None:
    """Validate every example; exit 1 when training would fail on the file, 2 when unreadable."""
    from tuneforge.data.io import DatasetError
    from tuneforge.data.printing import print_report
    from tuneforge.data.validate import check_file
    from tuneforge.tokenize.measure import context_limit, token_measure

    tokenizer = load_tokenizer_or_exit(model, as_json, path=str(file))
    measure = None
    if tokenizer is not None:
        measure = token_measure(tokenizer)
        max_tokens = max_tokens or context_limit(tokenizer)
    try:
        # A large JSON Lines file is checked on every core (same report, line for line).
        report = check_file(
            file,
            format,
            prompt_col=prompt_col,
            completion_col=completion_col,
            text_col=text_col,
            measure=measure,
            max_tokens=max_tokens,
        )
    except DatasetError as e:
        fail(e, 2, as_json, path=str(file))
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(limit or None)) + "\n")
    else:
        print_report(report, console, limit)
    raise typer.Exit(0 if report.ok else 1)


@data_app.command("inspect")
def data_inspect(
    file: Path = typer.Argument(..., help="The dataset file (JSONL, one example per line)."),
    model: str = typer.Option(
        ..., "--model", help="Model folder or Hub id whose tokenizer to use."
    ),
    index: int = typer.Option(0, "--index", help="0-based index of the first example to show."),
    count: int = typer.Option(1, "--count", help="How many examples to show."),
    train_on: str = typer.Option(
        "assistant", "--train-on", help="Which tokens are trained: assistant, last_assistant, all."
    ),
) -> None:
    """Show examples as the model sees them: trained tokens highlighted, masked tokens dimmed."""
    from tuneforge.data.io import DatasetError, read_dataset
    from tuneforge.tokenize.encode import TRAIN_ON
    from tuneforge.tokenize.inspect import inspect_example

    if train_on not in TRAIN_ON:
        err_console.print(f"--train-on must be one of {', '.join(TRAIN_ON)}")
        raise typer.Exit(2)
    try:
        loaded = read_dataset(file)
    except DatasetError as e:
        err_console.print(str(e))
        raise typer.Exit(1) from e
    examples = list(loaded.examples())
    if not 0 <= index < len(examples):
        err_console.print(f"--index {index} is out of range: the file has {len(examples)} examples")
        raise typer.Exit(1)
    tokenizer = load_tokenizer_or_exit(model)
    failed = False
    for line, example in examples[index : index + max(count, 1)]:
        try:
            panel, _ = inspect_example(example, tokenizer, train_on, title=f"{file.name}:{line}")
        except ValueError as e:
            err_console.print(f"{file.name}:{line}: {e}")
            failed = True
            continue
        console.print(panel)
    if failed:
        raise typer.Exit(1)


@data_app.command("clean")
def data_clean(
    file: Path = typer.Argument(
        ..., help="The dataset: JSONL, a JSON array, TXT, CSV, TSV or Parquet."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Where to write the cleaned JSONL."),
    format: str | None = typer.Option(None, "--format", help=_FORMAT_HELP),
    blocklist: Path | None = typer.Option(
        None,
        "--blocklist",
        help="Drop examples containing these phrases: one per line (case-insensitive, whole "
        "words), 're:' for a regex, '#' for comments.",
    ),
    redact_pii: bool = typer.Option(
        False,
        "--redact-pii",
        help="Replace emails, phone, card and account numbers by [EMAIL], ...",
    ),
    dedupe: bool = typer.Option(True, "--dedupe/--no-dedupe", help="Drop exact duplicates."),
    near_dedupe: bool = typer.Option(
        True, "--near-dedupe/--no-near-dedupe", help="Drop near duplicates (MinHash LSH)."
    ),
    near_dup_threshold: float = typer.Option(
        0.9,
        "--near-dup-threshold",
        min=0.0,
        max=1.0,
        help="Word-shingle Jaccard similarity from which two examples are near duplicates.",
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Token limit per example (see --too-long)."
    ),
    too_long: str = typer.Option(
        "drop", "--too-long", help="Over --max-tokens: drop, or truncate (chat: whole turns; text)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Model folder or Hub id whose tokenizer counts tokens; without it, tokens are "
        "estimated as characters / 4.",
    ),
    rejects: Path | None = typer.Option(
        None, "--rejects", help="Where dropped lines go (default: OUT.rejects.jsonl)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON summary on stdout."),
) -> None:
    """Fix what is safe, drop what is not, dedupe, filter blocklisted phrases, redact PII."""
    from tuneforge.data.blocklist import Blocklist
    from tuneforge.data.clean import CleanOptions, clean, print_clean_report
    from tuneforge.data.io import DatasetError
    from tuneforge.tokenize.measure import token_measure

    if too_long not in ("drop", "truncate"):
        fail("--too-long must be 'drop' or 'truncate'", 2, as_json)
    words = None
    if blocklist is not None:
        try:
            words = Blocklist.load(blocklist)
        except (OSError, ValueError) as e:
            fail(f"cannot read the blocklist: {e}", 2, as_json)
    tokenizer = load_tokenizer_or_exit(model, as_json)
    try:
        options = CleanOptions(
            format=format,
            dedupe=dedupe,
            near_dedupe=near_dedupe,
            near_dup_threshold=near_dup_threshold,
            blocklist=words,
            redact_pii=redact_pii,
            max_tokens=max_tokens,
            too_long=too_long,  # type: ignore[arg-type]
            measure=None if tokenizer is None else token_measure(tokenizer),
        )
        report = clean(file, out, options, rejects=rejects)
    except (DatasetError, ValueError) as e:
        fail(e, 2, as_json)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    else:
        print_clean_report(report, console)


@data_app.command("split")
def data_split(
    file: Path = typer.Argument(..., help="The dataset to split (JSONL, one example per line)."),
    valid: float = typer.Option(
        0.1, "--valid", help="Validation share: a fraction (0.1) or a number of examples (200)."
    ),
    seed: int = typer.Option(0, "--seed", help="The same seed gives the same split."),
    stratify: str | None = typer.Option(
        None,
        "--stratify",
        help="Keep the share of each value of this field (e.g. label, meta.intent).",
    ),
    out_dir: Path | None = typer.Option(
        None, "-o", "--out-dir", help="Write train.jsonl and valid.jsonl into this folder."
    ),
    train_out: Path | None = typer.Option(None, "--train-out", help="Where the training set goes."),
    valid_out: Path | None = typer.Option(
        None, "--valid-out", help="Where the validation set goes."
    ),
    near_dup_threshold: float = typer.Option(
        0.9,
        "--near-dup-threshold",
        min=0.0,
        max=1.0,
        help="Near duplicates (word-shingle Jaccard) from this similarity stay on one side.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON summary on stdout."),
) -> None:
    """Hold out a seeded validation set that no duplicate or near duplicate straddles."""
    from rich.table import Table

    from tuneforge.data.io import DatasetError
    from tuneforge.data.split import split

    if out_dir is not None:
        train_out = train_out or out_dir / "train.jsonl"
        valid_out = valid_out or out_dir / "valid.jsonl"
    if train_out is None or valid_out is None:
        fail("give -o DIR, or both --train-out and --valid-out", 2, as_json)
    try:
        report = split(
            file,
            train_out,
            valid_out,
            valid,
            seed=seed,
            stratify=stratify,
            near_dup_threshold=near_dup_threshold,
        )
    except (DatasetError, ValueError) as e:
        fail(e, 2, as_json)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return
    console.print(
        f"[bold]{report.examples}[/bold] examples -> [green]{report.train}[/green] train "
        f"({report.train_path}), [green]{report.valid}[/green] valid ({report.valid_path}); "
        f"seed {report.seed}; {report.duplicate_groups} duplicate group(s) kept on one side"
        + (f"; {report.skipped} unreadable line(s) skipped" if report.skipped else "")
    )
    if report.strata:
        table = Table(title=f"by {stratify}")
        for column in (str(stratify), "train", "valid"):
            table.add_column(column, justify="left" if column == stratify else "right")
        for value, counts in report.strata.items():
            table.add_row(value, str(counts["train"]), str(counts["valid"]))
        console.print(table)


@data_app.command("stats")
def data_stats(
    file: Path = typer.Argument(..., help="The dataset (JSONL, a JSON array, TXT, CSV, ...)."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Model folder or Hub id: count tokens with its tokenizer and template.",
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Context limit to check (default: the model's)."
    ),
    train_on: str = typer.Option(
        "assistant", "--train-on", help="Which tokens are trained: assistant, last_assistant, all."
    ),
    format: str | None = typer.Option(None, "--format", help=_FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON report on stdout."),
) -> None:
    """Sizes per example, tokens vs the context, trained vs masked tokens, and the auto epochs."""
    from tuneforge.data.io import DatasetError
    from tuneforge.data.stats import dataset_stats, print_stats_report
    from tuneforge.tokenize.encode import TRAIN_ON
    from tuneforge.tokenize.measure import context_limit, token_counter

    if train_on not in TRAIN_ON:
        fail(f"unknown train_on {train_on!r}; choose one of {', '.join(TRAIN_ON)}", 2, as_json)
    tokenizer = load_tokenizer_or_exit(model, as_json)
    try:
        count = None if tokenizer is None else token_counter(tokenizer, train_on)
        if tokenizer is not None:
            max_tokens = max_tokens or context_limit(tokenizer)
        report = dataset_stats(
            file, count=count, max_tokens=max_tokens, train_on=train_on, format=format
        )
    except (DatasetError, ValueError) as e:
        fail(e, 2, as_json)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    else:
        print_stats_report(report, console)
