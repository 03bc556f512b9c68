"""What a run finds in and leaves in its output folder, and what it tells the user at setup.

- `TrainResult`: what a run produced;
- `resume_target`: the checkpoint to resume from, or None for a fresh run (which refuses a
  used folder unless output.overwrite);
- `load_best`: the best checkpoint's step, loss and metric (and weights, to export them);
- `save_run_folder`: the final model folder (weights or adapter, tokenizer, the merged export
  when asked, and `tuneforge.json` last), written atomically;
- `write_run_manifest`: `tuneforge.json`, the folder's description (base model, data hashes,
  config, metrics, parent);
- `report_setup` / `padding_fraction`: the summary printed before the first step;
  `progress_bar`: the live line during training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tuneforge import __version__, memory
from tuneforge.modeling.dtype import DTypeChoice
from tuneforge.modeling.folder import staged_export, write_manifest
from tuneforge.modeling.load import unwrap_model
from tuneforge.training import checkpoint as ckpt
from tuneforge.training.config import TrainConfig, higher_is_better
from tuneforge.training.data import BatchPlan, TokenizedSet, file_sha256
from tuneforge.training.lineage import Parent

if TYPE_CHECKING:
    import torch

    from tuneforge.training.loop import FinetuneRecipe

# What a run's `tokens` counts, per task: a DPO step trains pairs, a classifier examples.
TRAINED_UNITS = {"dpo": "pairs", "classify": "examples"}


@dataclass
class TrainResult:
    """What a run produced."""

    status: str  # "completed" or "stopped"
    output_dir: Path
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    # Why training ended: "completed" (all steps), "early_stopping" or "interrupted".
    stop_reason: str = "completed"


# Folders a fresh run may find in its output folder (written by `tuneforge lr-find`).
SIDE_FOLDERS = {"lr_find"}


def resume_target(cfg: TrainConfig, out: Path, ckpt_root: Path) -> Path | None:
    """The checkpoint `checkpoint.resume` points at ("auto": the latest, if any), or None.

    A fresh run refuses an output folder that holds anything but side folders, unless
    output.overwrite is set.
    """
    resume = cfg.checkpoint.resume
    if resume is not None and resume != "auto":
        return Path(resume)
    latest = ckpt.latest_checkpoint(ckpt_root)
    if resume == "auto" and latest is not None:
        return latest
    used = out.is_dir() and any(p.name not in SIDE_FOLDERS for p in out.iterdir())
    if used and not cfg.output.overwrite:
        hint = "continue it with --resume auto, " if latest is not None else ""
        raise FileExistsError(
            f"output folder {out} is not empty; {hint}choose another folder or set output.overwrite"
        )
    return None


def load_best(ckpt_root: Path, metric: str, model: torch.nn.Module | None) -> dict[str, Any]:
    """The best checkpoint by `metric` (early_stop.metric): its step, validation loss and
    `best_<metric>` (none without an evaluation); with `model`, its weights are loaded into it
    and its step is `exported_step`."""
    best = ckpt.best_checkpoint(ckpt_root, higher_is_better(metric))
    if best is None:
        return {}
    saved = ckpt.read_state(best)
    found: dict[str, Any] = {}
    if model is not None:
        ckpt.load_model_weights(model, best)
        found["exported_step"] = saved.step
    found.update(best_step=saved.step, best_valid_loss=saved.valid_loss)
    found[f"best_{metric}"] = saved.valid_metric
    return found


def save_run_folder(
    out: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    merge: bool,
    manifest: Callable[[Path], None],
) -> None:
    """Write the final model folder into `out` atomically: the model (weights, or the adapter),
    its tokenizer, `merged/` (the adapter folded into the base) if `merge`, then the manifest
    (`manifest(folder)` writes it; the staged folder becomes `out` only once it is complete).

    `merge` folds the adapter into `model` in place: call it last.
    """
    with staged_export(out) as stage:
        ckpt.save_model(model, stage)
        tokenizer.save_pretrained(str(stage))
        if merge:
            # merge_and_unload folds the adapter into the base weights in place: the adapter
            # was saved above, and this is the last use of the in-memory model.
            merged = unwrap_model(model).merge_and_unload(safe_merge=True)
            ckpt.save_model(merged, stage / "merged")
            tokenizer.save_pretrained(str(stage / "merged"))
        manifest(stage)


def export_run(recipe: FinetuneRecipe, final: dict[str, Any]) -> None:
    """The run's model folder (`save_run_folder`, with the manifest of `final`), and the closing
    line on the console."""
    r = recipe
    save_run_folder(
        r.out,
        r.model,
        r.tokenizer,
        r.cfg.output.merge,
        lambda folder: write_run_manifest(
            final,
            folder,
            cfg=r.cfg,
            train_set=r.train_set,
            valid_set=r.valid_set,
            replay=r.replay,
            parent=r.parent,
            labels=r.labels,
            dtype=r.dtype,
            phases=r.memory,
        ),
    )
    peak = memory.peak_rss_gb()
    r.console.print(
        f"done ({final['stop_reason']}): {r.state.step} steps, "
        f"{r.state.tokens:,} {TRAINED_UNITS.get(r.cfg.task, 'trained tokens')}"
        + (
            f", full_valid_loss {final['full_valid_loss']:.4f}"
            if "full_valid_loss" in final
            else ""
        )
        + (f", exported step {final['exported_step']}" if "exported_step" in final else "")
        + (f", peak memory {peak:.2f} GB" if peak is not None else "")
        + f" -> {r.out}"
    )


def write_run_manifest(
    final: dict[str, Any],
    folder: Path,
    *,
    cfg: TrainConfig,
    train_set: TokenizedSet,
    valid_set: TokenizedSet | None,
    replay: dict[str, Any] | None,
    parent: Parent | None,
    labels: list[str] | None,
    dtype: DTypeChoice | None = None,
    phases: dict[str, dict[str, float | None]] | None = None,
) -> None:
    """`tuneforge.json` in `folder`: what the run trained on, from what, and how it went.

    `memory` holds this process's peak resident memory when the manifest is written (the run's
    last step: load, training, evaluation and saving are behind it), and `phases`' marks (each
    phase's resident memory at its end and the peak so far) with "saved" added.
    """
    data: dict[str, Any] = {
        "train": {
            "path": str(cfg.data.train),
            "sha256": file_sha256(cfg.data.train),
            "examples": len(train_set.examples) - (replay or {}).get("examples", 0),
            "dropped_too_long": train_set.n_too_long_dropped,
            "truncated": train_set.n_truncated,
        }
    }
    if replay is not None:
        data["replay"] = replay
    if cfg.data.valid:
        assert valid_set is not None
        data["valid"] = {
            "path": str(cfg.data.valid),
            "sha256": file_sha256(cfg.data.valid),
            "examples": len(valid_set.examples),
        }
    manifest: dict[str, Any] = {
        "tuneforge_version": __version__,
        "base_model": parent.base_model if parent is not None else cfg.model.name_or_path,
        "parent_model": str(parent.path) if parent is not None else None,
        "task": cfg.task,
        "method": cfg.method,
        "dtype": dtype.name if dtype is not None else cfg.model.dtype,
        "dtype_reason": dtype.reason if dtype is not None else None,
        "data": data,
        "config": cfg.model_dump(mode="json"),
        "metrics": final,
    }
    saved = memory.snapshot()
    manifest["memory"] = {
        "peak_rss_gb": saved["peak_rss_gb"],
        "phases": {**(phases or {}), "saved": saved},
    }
    if cfg.task == "classify":
        manifest["labels"] = labels
    write_manifest(folder, manifest)


def progress_bar(console: Console, enabled: bool) -> Progress:
    """The training progress bar: steps done of all, the last step's loss, LR and speed."""
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def padding_fraction(plan: BatchPlan, world_size: int) -> float:
    """The share of token slots that are padding over one epoch's micro-batches."""
    real = slots = 0
    for batch in plan.epoch_batches(0):
        for rank in range(world_size):
            for items in plan.micro_batches(batch, rank):
                r, s = plan.padding_tokens(items)
                real, slots = real + r, slots + s
    return 1.0 - real / slots if slots else 0.0


def report_setup(recipe: FinetuneRecipe, console: Console) -> None:
    """Print what is about to train: method and parameter counts, unfreezing, replay, data,
    the resolved hyperparameters and batching, and the resume point."""
    r, c = recipe, console
    cfg, ts = r.cfg, r.train_set
    trainable, total = r.trainable.counts(r.model)
    source = f"{r.parent.path} (continued)" if r.parent else cfg.model.name_or_path
    task = f" ({len(r.labels or [])}-class classifier)" if cfg.task == "classify" else ""
    c.print(
        f"[bold]{cfg.method}[/] fine-tune of {source}{task}: "
        f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)"
    )
    c.print(f"dtype: {r.dtype.name} ({r.dtype.reason})")
    if cfg.task == "dpo":
        c.print(
            f"preference tuning (DPO): beta={cfg.dpo.beta:g}"
            + (f", label smoothing {cfg.dpo.label_smoothing:g}" if cfg.dpo.label_smoothing else "")
            + (f", SFT weight {cfg.dpo.sft_weight:g}" if cfg.dpo.sft_weight else "")
            + "; reference: the starting model's log-probs of every pair, computed once"
        )
    if r.unfreeze is not None:
        c.print(
            f"gradual unfreezing: {r.state.unfrozen_blocks} of {r.n_blocks} blocks open, "
            f"one more every {r.unfreeze.every} {'step(s)' if r.unfreeze.every != 'epoch' else ''}"
            f" up to {r.unfreeze.max_blocks}"
        )
    if r.replay is not None:
        c.print(
            f"replay: {r.replay['examples']} examples of {r.replay['path']} "
            f"({100 * r.replay['fraction']:.1f}% of the mix)"
        )
    c.print(
        f"train: {len(ts.examples)} examples of {ts.n_read} "
        f"({ts.n_too_long_dropped} dropped as longer than {cfg.data.max_length} tokens, "
        f"{ts.n_truncated} truncated, {ts.n_no_target} without trained tokens), "
        f"{ts.n_trained_tokens:,} trained tokens"
    )
    pad = padding_fraction(r.plan, r.proc.world_size)
    c.print(
        f"resolved: epochs={cfg.optim.epochs} batch_size={cfg.optim.batch_size} "
        f"lr={cfg.optim.lr:g} -> {r.total_steps} steps "
        f"({r.plan.steps_per_epoch}/epoch, warmup {r.warmup_steps}); "
        f"{'packing' if cfg.data.packing else 'length-grouped batches'}, "
        f"padding {100 * pad:.1f}% of tokens; processes={r.proc.world_size}"
    )
    if r.resume_from is not None:
        c.print(f"resumed from {r.resume_from} at step {r.state.step}")
