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
    from tuneforge.data.printing import print_report
    from tuneforge.data.validate import validate

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
    measure = None
    if model is not None:
        from tuneforge.tokenize.inspect import load_tokenizer
        from tuneforge.tokenize.measure import context_limit, token_measure

        try:
            tokenizer = load_tokenizer(model)
        except Exception as e:  # transformers raises OSError, ValueError, ... for a bad model
            fail(f"cannot load a tokenizer from {model!r}: {e}")
        measure = token_measure(tokenizer)
        max_tokens = max_tokens or context_limit(tokenizer)
    report = validate(loaded, measure=measure, max_tokens=max_tokens)
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

    from tuneforge.data.blocklist import Blocklist
    from tuneforge.data.clean import CleanOptions, clean, print_clean_report
    from tuneforge.data.io import DatasetError
    from tuneforge.tokenize.measure import token_measure

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
            measure=None if tokenizer is None else token_measure(tokenizer),
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
    from tuneforge.tokenize.encode import TRAIN_ON
    from tuneforge.tokenize.measure import context_limit, token_counter

    if train_on not in TRAIN_ON:
        raise _data_fail(
            f"unknown train_on {train_on!r}; choose one of {', '.join(TRAIN_ON)}", as_json
        )
    tokenizer = _load_tokenizer_or_exit(model, as_json)
    try:
        count = None if tokenizer is None else token_counter(tokenizer, train_on)
        if tokenizer is not None:
            max_tokens = max_tokens or context_limit(tokenizer)
        report = dataset_stats(
            file, count=count, max_tokens=max_tokens, train_on=train_on, format=format
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
    "from_": "parent.model",
    "replay": "parent.replay",
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
    method: str | None = typer.Option(None, "--method", help="full, lora or head."),
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
    from_: Path | None = typer.Option(
        None, "--from", help="Continue from this fine-tuned model folder (full or adapter)."
    ),
    replay: float | None = typer.Option(
        None, "--replay", help="With --from: share of the mix replayed from the parent's data."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Any config key, e.g. --set lora.r=8 (repeatable; YAML values)."
    ),
) -> None:
    """Fine-tune a model (full, LoRA or head; --from continues a fine-tune). Flags override
    the YAML config; every other option (freeze, unfreeze, early_stop, task ...) via --set."""
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
    example: str = typer.Option(
        "bank", "--example", help="bank (support chats) or search (shopping queries to JSON)."
    ),
    workdir: Path = typer.Option(
        Path("tuneforge-demo"), "--workdir", help="Folder for everything the demo writes."
    ),
    model: str | None = typer.Option(
        None, "--model", help="A Hub id or local model folder to use instead of the built-in base."
    ),
    quick: bool = typer.Option(False, "--quick", help="A shorter run (smaller data, fewer steps)."),
) -> None:
    """The whole journey offline: clean data, lr-find, fine-tune, evaluate, compare, serve."""
    from tuneforge.demo.journey import EXAMPLES, run_demo

    if example not in EXAMPLES:
        err_console.print(f"[red]error:[/] --example must be one of {', '.join(EXAMPLES)}")
        raise typer.Exit(2)
    run_demo(workdir / example, console, model=model, quick=quick, example=example)


# ---------------------------------------------------------------------------------------------
# tuneforge worker / jobs / models  (the fine-tuning job store: tuneforge.jobs)
# ---------------------------------------------------------------------------------------------

jobs_app = typer.Typer(help="Fine-tuning jobs: list, show, events, cancel.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
# Other commands (e.g. `models lineage`) join this group.
models_app = typer.Typer(help="Models: import (GGUF), list, export, lineage.", no_args_is_help=True)
app.add_typer(models_app, name="models")

_DATA_DIR_OPT = typer.Option(
    Path("tuneforge-data"), "--data-dir", help="The job store's data directory."
)
_DB_URL_OPT = typer.Option(
    None, "--database-url", help="Job store database URL (default: SQLite in --data-dir)."
)
_BASE_URL_OPT = typer.Option(
    None,
    "--base-url",
    help="Talk to this server (e.g. http://127.0.0.1:8000) instead of the store.",
)
_API_KEY_OPT = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Key for --base-url.")
_ORG_OPT = typer.Option(None, "--org", help="Store mode: only this organization (default: all).")
_JSON_OPT = typer.Option(False, "--json", help="Print JSON on stdout.")


def _jobs_client(data_dir: Path, database_url, base_url, api_key, org):
    from tuneforge.jobs.client import HttpClient, StoreClient

    if base_url:
        return HttpClient(base_url, api_key)
    return StoreClient(data_dir, database_url, org)


def _jobs_call(fn, *args):
    """Run a client call; print store / HTTP errors as one line and exit 1."""
    from tuneforge.jobs.errors import StoreError

    try:
        return fn(*args)
    except (StoreError, RuntimeError, KeyError) as err:
        err_console.print(f"[red]error:[/] {getattr(err, 'message', err)}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def worker(
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_URL_OPT,
    lease_seconds: float = typer.Option(
        30.0, "--lease-seconds", help="A worker silent this long is presumed dead."
    ),
    once: bool = typer.Option(False, "--once", help="Exit when no job is waiting."),
    prewarm: bool = typer.Option(
        True,
        "--prewarm/--no-prewarm",
        help="Keep a training process with torch imported ready for the next job.",
    ),
    max_job_seconds: float | None = typer.Option(
        None,
        "--max-job-seconds",
        min=1,
        help="Wall-clock limit of one run of a job; past it training stops and the job fails "
        "(default 86400).",
    ),
) -> None:
    """Run fine-tuning jobs from the store, one at a time (Ctrl-C re-queues the current job)."""
    import logging
    import signal
    import threading

    from tuneforge.jobs import JobStore, Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    w = Worker(
        JobStore.open(data_dir, database_url),
        lease_s=lease_seconds,
        prewarm=prewarm,
        max_wall_s=max_job_seconds,
    )
    err_console.print(f"worker {w.worker_id} on {data_dir}", highlight=False)
    w.run(stop, once=once)


@jobs_app.command("list")
def jobs_list(
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_URL_OPT,
    base_url: str | None = _BASE_URL_OPT,
    api_key: str | None = _API_KEY_OPT,
    org: str | None = _ORG_OPT,
    limit: int = typer.Option(20, "--limit", min=1, help="How many jobs, newest first."),
    as_json: bool = _JSON_OPT,
) -> None:
    """List fine-tuning jobs, newest first."""
    import json

    from rich.table import Table

    client = _jobs_client(data_dir, database_url, base_url, api_key, org)
    jobs = _jobs_call(client.list_jobs, limit)
    if as_json:
        print(json.dumps(jobs, indent=2))
        return
    table = Table()
    for col in ("id", "org", "model", "status", "step", "fine_tuned_model"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        tf = j.get("tuneforge") or {}
        step = f"{tf.get('step', '')}/{tf.get('total_steps') or '?'}"
        table.add_row(
            j["id"],
            j["organization_id"],
            j["model"],
            j["status"],
            step,
            j["fine_tuned_model"] or "",
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: str = typer.Argument(..., help="The job id (ftjob-...)."),
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_URL_OPT,
    base_url: str | None = _BASE_URL_OPT,
    api_key: str | None = _API_KEY_OPT,
    org: str | None = _ORG_OPT,
) -> None:
    """Print a job as JSON (OpenAI's fine_tuning.job object), with its checkpoints."""
    import json

    client = _jobs_client(data_dir, database_url, base_url, api_key, org)
    job = _jobs_call(client.get_job, job_id)
    job["checkpoints"] = _jobs_call(client.checkpoints, job_id)
    print(json.dumps(job, indent=2))


@jobs_app.command("events")
def jobs_events(
    job_id: str = typer.Argument(..., help="The job id (ftjob-...)."),
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_URL_OPT,
    base_url: str | None = _BASE_URL_OPT,
    api_key: str | None = _API_KEY_OPT,
    org: str | None = _ORG_OPT,
    limit: int = typer.Option(100, "--limit", min=1, help="How many of the newest events."),
    as_json: bool = _JSON_OPT,
) -> None:
    """Print a job's newest events, oldest of them first."""
    import json
    from datetime import datetime

    client = _jobs_client(data_dir, database_url, base_url, api_key, org)
    events = list(reversed(_jobs_call(client.events, job_id, limit)))
    if as_json:
        print(json.dumps(events, indent=2))
        return
    for e in events:
        when = datetime.fromtimestamp(e["created_at"]).strftime("%H:%M:%S")
        style = {"warn": "yellow", "error": "red"}.get(e["level"], "")
        console.print(f"{when} {e['message']}", style=style, markup=False, highlight=False)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str = typer.Argument(..., help="The job id (ftjob-...)."),
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_URL_OPT,
    base_url: str | None = _BASE_URL_OPT,
    api_key: str | None = _API_KEY_OPT,
    org: str | None = _ORG_OPT,
) -> None:
    """Cancel a job (a running one stops at the end of its current step)."""
    client = _jobs_client(data_dir, database_url, base_url, api_key, org)
    job = _jobs_call(client.cancel, job_id)
    pending = (job.get("tuneforge") or {}).get("control") == "cancel"
    console.print(f"{job['id']}: {'cancelling' if pending else job['status']}")


@models_app.command("list")
def models_list(
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_URL_OPT,
    base_url: str | None = _BASE_URL_OPT,
    api_key: str | None = _API_KEY_OPT,
    org: str | None = _ORG_OPT,
    as_json: bool = _JSON_OPT,
) -> None:
    """List fine-tuned models and checkpoints (store), or every model a server serves."""
    import json

    from rich.table import Table

    client = _jobs_client(data_dir, database_url, base_url, api_key, org)
    models = _jobs_call(client.models)
    if as_json:
        print(json.dumps(models, indent=2))
        return
    table = Table()
    for col in ("id", "owned_by", "kind", "path"):
        table.add_column(col, overflow="fold")
    for m in models:
        table.add_row(m["id"], m.get("owned_by", ""), m.get("kind", ""), m.get("path", ""))
    console.print(table)


@models_app.command("export")
def models_export(
    model_id: str = typer.Argument(..., help="A fine-tuned model or checkpoint id (ft:...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (must be empty)."),
    merge: bool = typer.Option(
        False, "--merge", help="Fold a LoRA adapter into its base: full safetensors weights."
    ),
    data_dir: Path = _DATA_DIR_OPT,
    database_url: str | None = _DB_URL_OPT,
    org: str | None = _ORG_OPT,
) -> None:
    """Copy a fine-tuned model out of the store as a standard Hugging Face folder."""
    from tuneforge.jobs.client import StoreClient, export_model

    client = StoreClient(data_dir, database_url, org)
    source = _jobs_call(client.model_path, model_id)
    try:
        dest = export_model(source, out, merge=merge)
    except (FileExistsError, OSError, ValueError) as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"{model_id} -> {dest}", highlight=False)


@models_app.command("import")
def models_import(
    source: str = typer.Argument(..., help="A .gguf file (Ollama, llama.cpp), Hub id or folder."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder to write (new or empty); needed for a .gguf file."
    ),
    dtype: str = typer.Option(
        "fp32", "--dtype", help="Weights' dtype: fp32 (exact dequantized values), bf16 or fp16."
    ),
) -> None:
    """Import a GGUF file as a standard Hugging Face folder (weights dequantized)."""
    import re

    from tuneforge.modeling.gguf import GGUFImportError, import_gguf, read_gguf_info

    path = Path(source)
    hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.endswith(".gguf")
    if path.is_dir() or (not path.exists() and hub_id):
        what = "a folder" if path.is_dir() else "a Hub id"
        console.print(
            f"{source} is {what}: TuneForge uses it as is (e.g. `tuneforge train --model "
            f"{source}`); no import needed.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    try:
        if out is None:
            raise GGUFImportError("give the folder to write with -o DIR")
        info = read_gguf_info(path)
        dest = import_gguf(path, out, dtype=dtype)
    except GGUFImportError as err:
        err_console.print(f"[red]error:[/] {_escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    how = "dequantized" if info.dequantized else "converted"
    console.print(
        f"{path.name}: {info.architecture} weights {how} from {info.quantization} to {dtype}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"model folder: {dest}", markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# tuneforge eval / report
# ---------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.command("eval")
def eval_(
    model: str = typer.Option(..., "--model", help="Fine-tuned model folder (full or adapter)."),
    data: Path = typer.Option(..., "--data", help="Hold-out file the model never trained on."),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Model to compare with (default: the model's base, if known)."
    ),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Evaluate the model alone."),
    general: Path | None = typer.Option(
        None, "--general", help="General text whose perplexity before/after shows forgetting."
    ),
    blocklist: Path | None = typer.Option(
        None, "--blocklist", help="Phrases to count in replies (the `data clean` format)."
    ),
    metric: list[str] = typer.Option(
        [], "--metric", help="Custom metric module:function or file.py:function (repeatable)."
    ),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", min=1, help="Longest reply (default: 2x longest reference)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N examples."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Prompts generated together."),
    no_generate: bool = typer.Option(False, "--no-generate", help="Likelihood metrics only."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of sampling."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report folder (default: <model>/eval)."
    ),
) -> None:
    """Evaluate a fine-tune on hold-out data against its base: metrics, deltas, report."""
    import warnings

    from transformers.utils import logging as hf_logging

    from tuneforge.evaluation import EvalError, EvalSettings, GenerationSettings, run_eval

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        settings = EvalSettings(
            max_new_tokens=max_new_tokens,
            generation=GenerationSettings(
                do_sample=sample,
                temperature=temperature,
                top_p=top_p,
                batch_size=batch_size,
                seed=seed,
            ),
            limit=limit,
            blocklist=blocklist,
            metrics=metric,
            generate=not no_generate,
            seed=seed,
            dtype=dtype,
        )
        run_eval(
            model,
            data,
            baseline=None if no_baseline else (baseline or "auto"),
            general=general,
            out_dir=out,
            settings=settings,
            console=console,
        )
    except (EvalError, ValueError, OSError) as err:
        err_console.print(f"[red]error:[/] {_escape(str(err))}", highlight=False)
        raise typer.Exit(2) from None


@app.command("report")
def report(
    path: Path = typer.Argument(..., help="An eval folder, or a model folder (uses <model>/eval)."),
) -> None:
    """Regenerate report.md / report.html from an evaluation's metrics.json."""
    from tuneforge.evaluation import EvalError, regenerate_report

    try:
        regenerate_report(path, console)
    except (EvalError, OSError) as err:
        err_console.print(f"[red]error:[/] {_escape(str(err))}", highlight=False)
        raise typer.Exit(2) from None


# ---------------------------------------------------------------------------------------------
# tuneforge serve  (the OpenAI-compatible server: tuneforge.server)
# ---------------------------------------------------------------------------------------------


@app.command()
def serve(
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="The model store: folders served by relative path as id."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Base model: id in the store, folder or Hub id."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Server state folder."),
    host: str | None = typer.Option(None, "--host", help="Interface to bind (127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port to bind (8000)."),
    api_key: list[str] = typer.Option(
        [], "--api-key", help="Accepted API key (repeatable; also env TUNEFORGE_API_KEYS)."
    ),
    api_keys_file: Path | None = typer.Option(
        None, "--api-keys-file", help='JSON file mapping key -> organization: {"sk-..": "org"}.'
    ),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, bf16 or fp16."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: auto)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size", help="Rows per step."),
    max_queue: int | None = typer.Option(None, "--max-queue", help="Waiting requests before 429."),
    max_adapters: int | None = typer.Option(None, "--max-adapters", help="Adapters kept loaded."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run model code from the Hub (off by default)."
    ),
    no_worker: bool = typer.Option(
        False, "--no-worker", help="Do not run fine-tuning jobs here (run `tuneforge worker`)."
    ),
    database_url: str | None = typer.Option(
        None, "--database-url", help="Job store database URL (default: SQLite in --data-dir)."
    ),
    admin_key: list[str] = typer.Option(
        [],
        "--admin-key",
        help="Operator key: may also delete --model-dir folders (repeatable; env "
        "TUNEFORGE_ADMIN_KEYS).",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="Extra name accepted in the Host header (repeatable; env TUNEFORGE_ALLOWED_HOSTS).",
    ),
    allow_public_without_keys: bool = typer.Option(
        False,
        "--allow-public-without-keys",
        help="Start on a non-loopback --host with no API key (refused otherwise).",
    ),
) -> None:
    """Serve the base model and its fine-tunes with OpenAI's inference API."""
    import uvicorn
    from pydantic import ValidationError

    from tuneforge.server.app import create_app
    from tuneforge.server.settings import ServerSettings

    try:
        settings = ServerSettings.from_env(
            model_dir=model_dir,
            base_model=base_model,
            data_dir=data_dir,
            host=host,
            port=port,
            api_keys_file=api_keys_file,
            dtype=dtype,
            device=device,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            max_adapters=max_adapters,
            trust_remote_code=trust_remote_code or None,
            worker=not no_worker,
            database_url=database_url,
            allow_public_without_keys=allow_public_without_keys or None,
        )
        if api_key:
            settings.api_keys = [*settings.api_keys, *api_key]
        if admin_key:
            settings.admin_keys = [*settings.admin_keys, *admin_key]
        if allowed_host:
            settings.allowed_hosts = [*settings.allowed_hosts, *allowed_host]
        server_app = create_app(settings)
    except (ValidationError, ValueError, OSError) as err:
        err_console.print(f"[red]error:[/] {_escape(str(err))}", highlight=False)
        raise typer.Exit(2) from None
    auth = "on" if server_app.state.keys.enabled else "off (no API keys configured)"
    err_console.print(
        f"serving [bold]{server_app.state.engine.base.id}[/] from {settings.model_dir} "
        f"on http://{settings.host}:{settings.port}/v1 (auth {auth})",
        highlight=False,
    )
    uvicorn.run(server_app, host=settings.host, port=settings.port, log_level="info")


# ---------------------------------------------------------------------------------------------
# tuneforge lr-find / models lineage  (tuneforge.training.lr_find, tuneforge.training.lineage)
# ---------------------------------------------------------------------------------------------


@app.command("lr-find")
def lr_find_cmd(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (as for train)."),
    model: str | None = typer.Option(None, "--model", help="Base model: Hub id or folder."),
    train: Path | None = typer.Option(None, "--train", help="Training data file."),
    method: str | None = typer.Option(None, "--method", help="full, lora or head."),
    batch_size: str | None = typer.Option(None, "--batch-size", help="Examples per step."),
    output: Path | None = typer.Option(None, "--output", "-o", help="The run's output folder."),
    out: Path | None = typer.Option(
        None, "--out", help="Where lr_find.csv / .png go (default: <output>/lr_find)."
    ),
    start_lr: float = typer.Option(1e-7, "--start-lr", help="First LR of the sweep."),
    end_lr: float = typer.Option(1.0, "--end-lr", help="Last LR of the sweep."),
    steps: int = typer.Option(100, "--steps", min=5, help="Sweep length in optimizer steps."),
    rule: str = typer.Option("min_over_ten", "--rule", help="min_over_ten or steepest."),
    set_: list[str] = typer.Option([], "--set", help="Any config key, e.g. --set lora.r=8."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON summary on stdout."),
) -> None:
    """Learning-rate range test: sweep the LR up exponentially, suggest one, plot the curve."""
    import json
    import sys

    import yaml

    from tuneforge.training.config import ConfigError, load_config
    from tuneforge.training.lr_find import lr_find

    overrides: dict[str, object] = {
        "model.name_or_path": model,
        "data.train": str(train) if train else None,
        "method": method,
        "optim.batch_size": _auto_or_number(batch_size),
        "output.dir": str(output) if output else None,
    }
    try:
        for item in set_:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError([f"--set {item!r}: expected KEY=VALUE"])
            overrides[key.strip()] = yaml.safe_load(raw)
        cfg = load_config(config, overrides)
    except ConfigError as err:
        err_console.print(f"[red]invalid training config[/] ({len(err.problems)} problems):")
        for problem in err.problems:
            err_console.print(f"  - {problem}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    try:
        result = lr_find(cfg, out, start_lr, end_lr, steps, rule=rule, console=err_console)
    except (ValueError, OSError) as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return
    fmt = lambda lr: f"{lr:.2e}" if lr is not None else "none"  # noqa: E731
    console.print(
        f"suggested lr [bold]{fmt(result.suggested)}[/] ({rule}); steepest {fmt(result.steepest)}, "
        f"min/10 {fmt(result.min_over_ten)}; {len(result.lrs)} steps"
        + (" (stopped: loss diverged)" if result.stopped_early else "")
    )
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}")


@models_app.command("lineage")
def models_lineage(
    folder: Path = typer.Argument(..., help="A fine-tuned model folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the chain as a JSON list."),
) -> None:
    """Print where a model comes from: base -> v1 -> v2."""
    import json

    from tuneforge.training.lineage import lineage

    if not folder.is_dir():
        err_console.print(f"[red]error:[/] not a folder: {folder}", highlight=False)
        raise typer.Exit(1)
    chain = lineage(folder)
    if as_json:
        console.print_json(json.dumps(chain))
    else:
        console.print(" -> ".join(chain), highlight=False, soft_wrap=True)


def main() -> None:
    app()
