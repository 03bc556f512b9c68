"""The `tuneforge` command. Thin: parses arguments, calls the modules, prints results."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from tuneforge import __version__

app = typer.Typer(
    help="TuneForge: fine-tune GPT-style language models on your own data, self-hosted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check, clean, split and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"tuneforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """TuneForge: fine-tune GPT-style language models on your own data, self-hosted."""


# ---------------------------------------------------------------------------------------------
# tuneforge data ...
# ---------------------------------------------------------------------------------------------


# tuneforge data check -------------------------------------------------------------------------


@data_app.command("check")
def data_check(
    file: Path = typer.Argument(
        ..., help="The dataset: JSONL, a JSON array, TXT, CSV, TSV or Parquet."
    ),
    format: str | None = typer.Option(
        None, "--format", help="chat, prompt_completion, preference or text (default: detected)."
    ),
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
    import json
    import sys
    from typing import NoReturn

    from rich.markup import escape

    from tuneforge.data.io import DatasetError, read_dataset
    from tuneforge.data.validate import print_report, validate

    def fail(message: str) -> NoReturn:
        if as_json:
            sys.stdout.write(json.dumps({"path": str(file), "ok": False, "error": message}) + "\n")
        else:
            err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
        raise typer.Exit(2)

    try:
        loaded = read_dataset(
            file, format, prompt_col=prompt_col, completion_col=completion_col, text_col=text_col
        )
    except DatasetError as e:
        fail(str(e))
    tokenizer = None
    if model is not None:
        from tuneforge.tokenize.inspect import load_tokenizer

        try:
            tokenizer = load_tokenizer(model)
        except Exception as e:  # transformers raises OSError, ValueError, ... for a bad model
            fail(f"cannot load a tokenizer from {model!r}: {e}")
    report = validate(loaded, tokenizer=tokenizer, max_tokens=max_tokens)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(limit or None)) + "\n")
    else:
        print_report(report, console, limit)
    raise typer.Exit(0 if report.ok else 1)


# tuneforge data inspect -----------------------------------------------------------------------


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
    from tuneforge.tokenize.inspect import inspect_example, load_tokenizer

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
    tokenizer = load_tokenizer(model)
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


# tuneforge data clean / split / stats ---------------------------------------------------------


def _data_fail(message: str, as_json: bool = False, code: int = 2) -> typer.Exit:
    """Report an error the data commands cannot continue past; returns the Exit to raise."""
    import json
    import sys

    from rich.markup import escape

    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "error": message}) + "\n")
    else:
        err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _load_tokenizer_or_exit(model: str | None, as_json: bool) -> object | None:
    if model is None:
        return None
    from tuneforge.tokenize.inspect import load_tokenizer

    try:
        return load_tokenizer(model)
    except Exception as e:  # transformers raises OSError, ValueError, ... for a bad model
        raise _data_fail(f"cannot load a tokenizer from {model!r}: {e}", as_json) from e


@data_app.command("clean")
def data_clean(
    file: Path = typer.Argument(
        ..., help="The dataset: JSONL, a JSON array, TXT, CSV, TSV or Parquet."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Where to write the cleaned JSONL."),
    format: str | None = typer.Option(
        None, "--format", help="chat, prompt_completion, preference or text (default: detected)."
    ),
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
    import json
    import sys

    from tuneforge.data.clean import Blocklist, CleanOptions, clean, print_clean_report
    from tuneforge.data.io import DatasetError

    if too_long not in ("drop", "truncate"):
        raise _data_fail("--too-long must be 'drop' or 'truncate'", as_json)
    words = None
    if blocklist is not None:
        try:
            words = Blocklist.load(blocklist)
        except (OSError, ValueError) as e:
            raise _data_fail(f"cannot read the blocklist: {e}", as_json) from e
    tokenizer = _load_tokenizer_or_exit(model, as_json)
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
            tokenizer=tokenizer,
        )
        report = clean(file, out, options, rejects=rejects)
    except (DatasetError, ValueError) as e:
        raise _data_fail(str(e), as_json) from e
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
    import json
    import sys

    from rich.table import Table

    from tuneforge.data.io import DatasetError
    from tuneforge.data.split import split

    if out_dir is not None:
        train_out = train_out or out_dir / "train.jsonl"
        valid_out = valid_out or out_dir / "valid.jsonl"
    if train_out is None or valid_out is None:
        raise _data_fail("give -o DIR, or both --train-out and --valid-out", as_json)
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
        raise _data_fail(str(e), as_json) from e
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
    format: str | None = typer.Option(
        None, "--format", help="chat, prompt_completion, preference or text (default: detected)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON report on stdout."),
) -> None:
    """Sizes per example, tokens vs the context, trained vs masked tokens, and the auto epochs."""
    import json
    import sys

    from tuneforge.data.io import DatasetError
    from tuneforge.data.stats import dataset_stats, print_stats_report

    tokenizer = _load_tokenizer_or_exit(model, as_json)
    try:
        report = dataset_stats(
            file, tokenizer=tokenizer, max_tokens=max_tokens, train_on=train_on, format=format
        )
    except (DatasetError, ValueError) as e:
        raise _data_fail(str(e), as_json) from e
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    else:
        print_stats_report(report, console)


# ---------------------------------------------------------------------------------------------
# tuneforge train
# ---------------------------------------------------------------------------------------------


# Flags that map to one config key each; everything else is reachable through --set.
_TRAIN_FLAGS = {
    "model": "model.name_or_path",
    "train": "data.train",
    "valid": "data.valid",
    "method": "method",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "grad_accum": "optim.grad_accum",
    "lr": "optim.lr",
    "max_steps": "optim.max_steps",
    "max_length": "data.max_length",
    "packing": "data.packing",
    "dtype": "model.dtype",
    "output": "output.dir",
    "merge": "output.merge",
    "resume": "checkpoint.resume",
    "save_every": "checkpoint.save_every",
    "eval_every": "eval.eval_every",
    "seed": "seed",
}


def _auto_or_number(value: str | None) -> int | float | str | None:
    """Parse "auto", an int or a float given on the command line."""
    if value is None or value == "auto":
        return value
    import yaml

    parsed = yaml.safe_load(value)
    return parsed if isinstance(parsed, (int, float)) else value


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    model: str | None = typer.Option(None, "--model", help="Base model: Hub id or folder."),
    train: Path | None = typer.Option(None, "--train", help="Training data file (JSONL, ...)."),
    valid: Path | None = typer.Option(None, "--valid", help="Validation data file."),
    method: str | None = typer.Option(None, "--method", help="full or lora."),
    epochs: str | None = typer.Option(None, "--epochs", help="Number of epochs or 'auto'."),
    batch_size: str | None = typer.Option(
        None, "--batch-size", help="Examples per optimizer step (all processes), or 'auto'."
    ),
    grad_accum: int | None = typer.Option(None, "--grad-accum", help="Micro-batches per step."),
    lr: str | None = typer.Option(None, "--lr", help="Peak learning rate or 'auto'."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N steps."),
    max_length: int | None = typer.Option(None, "--max-length", help="Max tokens per example."),
    packing: bool | None = typer.Option(
        None, "--packing/--no-packing", help="Pack examples into max-length rows."
    ),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32 or bf16 (autocast)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output model folder."),
    merge: bool | None = typer.Option(
        None, "--merge/--no-merge", help="LoRA: also write merged weights to <output>/merged."
    ),
    resume: str | None = typer.Option(None, "--resume", help="'auto' or a checkpoint folder."),
    save_every: int | None = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
    eval_every: int | None = typer.Option(None, "--eval-every", help="Validate every N steps."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    set_: list[str] = typer.Option(
        [], "--set", help="Any config key, e.g. --set lora.r=8 (repeatable; YAML values)."
    ),
) -> None:
    """Fine-tune a model (full or LoRA). Flags override the YAML config."""
    import warnings

    import yaml

    from tuneforge.training.config import ConfigError, load_config

    values = dict(locals())
    overrides: dict[str, object] = {}
    for flag, key in _TRAIN_FLAGS.items():
        value = values[flag]
        if flag in ("epochs", "batch_size", "lr"):
            value = _auto_or_number(value)
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    problems = []
    for item in set_:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE")
            continue
        overrides[key.strip()] = yaml.safe_load(raw)
    try:
        if problems:
            raise ConfigError(problems)
        cfg = load_config(config, overrides)
    except ConfigError as err:
        err_console.print(f"[red]invalid training config[/] ({len(err.problems)} problems):")
        for problem in err.problems:
            err_console.print(f"  - {problem}", markup=False, highlight=False)
        raise typer.Exit(2) from None

    from transformers.utils import logging as hf_logging

    from tuneforge.training.loop import run_training

    hf_logging.disable_progress_bar()
    # peft reads a transformers attribute deprecated in v5; the warning is not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        result = run_training(cfg, err_console)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False)
        raise typer.Exit(1) from None
    if result.status == "stopped":
        raise typer.Exit(130)


# ---------------------------------------------------------------------------------------------
# tuneforge demo
# ---------------------------------------------------------------------------------------------


@app.command()
def demo(
    workdir: Path = typer.Option(
        Path("tuneforge-demo"), "--workdir", help="Folder for everything the demo writes."
    ),
    model: str | None = typer.Option(
        None, "--model", help="A Hub id or local model folder to use instead of the built-in base."
    ),
    quick: bool = typer.Option(False, "--quick", help="A shorter run (smaller data, fewer steps)."),
) -> None:
    """Walk the whole journey offline on a bundled example: check, clean, split, count, train."""
    from tuneforge.demo.journey import run_demo

    run_demo(workdir, console, model=model, quick=quick)


def main() -> None:
    app()
