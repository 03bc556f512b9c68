"""`tuneforge eval` and `tuneforge report` (tuneforge.evaluation)."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from tuneforge.cli.common import console, fail


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
    dtype: str = typer.Option("auto", "--dtype", help="auto, fp32, bf16 or fp16."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report folder (default: <model>/eval)."
    ),
) -> None:
    """Evaluate a fine-tune on hold-out data against its base: metrics, deltas, report."""
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
        fail(err, 2)


def report(
    path: Path = typer.Argument(..., help="An eval folder, or a model folder (uses <model>/eval)."),
) -> None:
    """Regenerate report.md / report.html from an evaluation's metrics.json."""
    from tuneforge.evaluation import EvalError, regenerate_report

    try:
        regenerate_report(path, console)
    except (EvalError, OSError) as err:
        fail(err, 2)
