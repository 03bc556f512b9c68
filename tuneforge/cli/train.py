"""`tuneforge train` and `tuneforge lr-find`: their config options come from `TrainConfig`
(`tuneforge.cli.config_flags`)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import typer

from tuneforge.cli.common import console, err_console, fail
from tuneforge.cli.config_flags import config_options
from tuneforge.training.config import TrainConfig


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # peft reads a transformers attribute deprecated in v5; the warning is not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@config_options
def train(cfg: TrainConfig) -> None:
    """Fine-tune a model (full, LoRA or head; --from continues a fine-tune). Flags override
    the YAML config and --set overrides both; every config key is a flag (--optim.lr ...)."""
    from tuneforge.training.loop import run_training

    _quiet_libraries()
    try:
        result = run_training(cfg, err_console)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as err:
        fail(err)
    if result.status == "stopped":
        raise typer.Exit(130)


@config_options
def lr_find_cmd(
    cfg: TrainConfig,
    out: Path | None = typer.Option(
        None, "--out", help="Where lr_find.csv / .png go (default: <output>/lr_find)."
    ),
    start_lr: float = typer.Option(1e-7, "--start-lr", help="First LR of the sweep."),
    end_lr: float = typer.Option(1.0, "--end-lr", help="Last LR of the sweep."),
    steps: int = typer.Option(100, "--steps", min=5, help="Sweep length in optimizer steps."),
    rule: str = typer.Option("min_over_ten", "--rule", help="min_over_ten or steepest."),
    as_json: bool = typer.Option(False, "--json", help="Print only a JSON summary on stdout."),
) -> None:
    """Learning-rate range test: sweep the LR up exponentially, suggest one, plot the curve."""
    from tuneforge.training.lr_find import lr_find

    try:
        result = lr_find(cfg, out, start_lr, end_lr, steps, rule=rule, console=err_console)
    except (ValueError, OSError) as err:
        fail(err)
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
