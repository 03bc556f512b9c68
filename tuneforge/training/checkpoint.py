"""Checkpoints: the one place where training state is written and read back.

A checkpoint folder `<root>/step-000120/` holds:

- the weights through `save_model` (a PEFT adapter, or full safetensors weights) plus the
  tokenizer, so it is itself a loadable model folder;
- `optimizer.pt`, `scheduler.pt`: their state dicts;
- `rng.pt`: python and torch (CPU and CUDA) RNG states;
- `trainer_state.json`: step, epoch, position in the epoch's batch order, counters, and the
  validation loss and selection metric measured at that step (if any). Written last.

Saves are atomic: everything goes into a hidden temporary folder next to the final one, files
and folder are fsynced, then the folder is renamed. A killed save leaves only a `.tmp-*`
folder, which `latest_checkpoint` ignores and the next save removes.

The final export into the run's folder (`modeling.folder.staged_export`) is atomic too: it is written in a
hidden folder inside the run's folder, fsynced, and moved into place entry by entry with the
manifest `tuneforge.json` last, so a folder with a manifest always holds a whole model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from tuneforge.fsutil import fsync_dir
from tuneforge.modeling.folder import (
    STATE_FILE,
    checkpoint_name,
    checkpoint_steps,
    fsync_tree,
)
from tuneforge.modeling.load import unwrap_model


@dataclass
class TrainState:
    """Progress needed to continue a run exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    valid_loss: float | None = None
    # The metric that picks the best evaluation (early_stop.metric), its value measured at
    # this step (None: no evaluation here), and the best value so far.
    metric: str = "valid_loss"
    valid_metric: float | None = None
    best_valid_metric: float | None = None
    # Gradual unfreezing: top blocks open for training (None: no schedule).
    unfrozen_blocks: int | None = None
    # Early stopping: the metric's value to beat by min_delta, and evaluations since it was set.
    early_stop_best: float | None = None
    evals_without_improvement: int = 0
    # What the saved position means: resuming with another data order would silently
    # train on the wrong examples, so the recipe refuses a mismatch.
    data_order: dict[str, Any] | None = None


def save_model(model: nn.Module, path: str | Path) -> None:
    """Save the unwrapped model (no `module.` / `_orig_mod.` prefixes) as safetensors.

    A `PeftModel` writes adapter_config.json + adapter_model.safetensors; a plain model writes
    config.json + model.safetensors. Every weight save in TuneForge goes through here.
    """
    unwrap_model(model).save_pretrained(str(path), safe_serialization=True)


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights written by `save_model` back into `model` in place."""
    model = unwrap_model(model)
    path = Path(path)
    if (path / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{path}: unexpected adapter keys {result.unexpected_keys[:3]}")
        return
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    if not state:
        raise FileNotFoundError(f"{path}: no safetensors weights")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (e.g. GPT-2's lm_head = wte) are saved once and legitimately "missing".
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing[:3]}, unexpected {unexpected[:3]} weights")


def capture_rng() -> dict[str, Any]:
    """RNG states of python and torch (CPU and every CUDA device)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    tokenizer: Any = None,
) -> Path:
    """Atomically write a checkpoint of `state.step` under `root`; return its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(state.step)
    if final.exists():
        return final
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(capture_rng(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    fsync_tree(tmp)
    os.rename(tmp, final)
    fsync_dir(root)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    return [p for _, p in checkpoint_steps(root)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_state(path: str | Path) -> TrainState:
    """The `TrainState` stored in a checkpoint folder."""
    saved = json.loads((Path(path) / STATE_FILE).read_text())
    if "best_valid_loss" in saved:  # written before the metric was a setting: valid_loss
        saved["best_valid_metric"] = saved.pop("best_valid_loss")
        saved["valid_metric"] = saved.get("valid_loss")
    return TrainState(**saved)


def _load_tensors(file: Path) -> Any:
    # weights_only: a checkpoint never runs code when read.
    return torch.load(file, map_location="cpu", weights_only=True)


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG states from `path`; return the progress."""
    path = Path(path)
    load_model_weights(model, path)
    optimizer.load_state_dict(
        torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    )
    scheduler.load_state_dict(
        torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
    )
    restore_rng(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
    return read_state(path)


def best_checkpoint(root: str | Path, higher: bool = False) -> Path | None:
    """The checkpoint with the best recorded validation metric (the state's `valid_metric`:
    the highest if `higher`, else the lowest; the earliest on a tie)."""
    scored = [
        (-s.valid_metric if higher else s.valid_metric, p)
        for p in list_checkpoints(root)
        if (s := read_state(p)).valid_metric is not None
    ]
    return min(scored, key=lambda x: x[0])[1] if scored else None


def prune_checkpoints(
    root: str | Path, keep_last: int, keep_best: bool, higher: bool = False
) -> list[Path]:
    """Delete old checkpoints, keeping the newest `keep_last` and (optionally) the best one
    (`best_checkpoint`). Also removes leftovers of interrupted saves."""
    root = Path(root)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    found = list_checkpoints(root)
    keep = set(found[-keep_last:])
    best = best_checkpoint(root, higher) if keep_best else None
    if best is not None:
        keep.add(best)
    removed = [p for p in found if p not in keep]
    for p in removed:
        shutil.rmtree(p)
    return removed
