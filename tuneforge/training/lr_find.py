"""The learning-rate range test (Smith 2015; fastai's `lr_find`).

From the run's starting weights (same config as `train`: model, method, freezing, data,
batches), the LR grows exponentially from `start_lr` to `end_lr` over `num_steps` optimizer
steps. The loss is smoothed with a bias-corrected exponential moving average; the sweep stops
when the smoothed loss exceeds `diverge` times its minimum. Two suggestions:

- steepest: the LR where the smoothed loss falls fastest (most negative slope in log LR);
- min_over_ten: a tenth of the LR at the smoothed minimum.

The trained weights, optimizer state and RNG are restored afterwards, so the model (and any
files) are untouched. The curve is written as CSV and PNG.

Example:
    >>> result = lr_find(load_config("lora.yaml"), out_dir=Path("runs/lr"))
    >>> result.suggested
    0.00031
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tuneforge.training.checkpoint import capture_rng, restore_rng
from tuneforge.training.config import TrainConfig
from tuneforge.training.loop import FinetuneRecipe


@dataclass
class LRFindResult:
    """The sweep: LRs, raw and smoothed losses, and the suggestions."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    steepest: float | None = None
    min_over_ten: float | None = None
    suggested: float | None = None
    rule: str = "min_over_ten"
    dtype: str | None = None  # the compute dtype model.dtype resolved to
    stopped_early: bool = False  # the loss diverged before end_lr
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggested": self.suggested,
            "rule": self.rule,
            "dtype": self.dtype,
            "steepest": self.steepest,
            "min_over_ten": self.min_over_ten,
            "steps": len(self.lrs),
            "stopped_early": self.stopped_early,
            "files": {k: str(v) for k, v in self.files.items()},
        }


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average (fastai's smoothing)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """(steepest, min_over_ten) suggestions from a smoothed curve.

    The first and last tenth of the points are skipped for the slope: the average is still
    warming up at the start, and the end is the divergence.
    """
    if len(lrs) < 5:
        return None, None
    i_min = min(range(len(smoothed)), key=smoothed.__getitem__)
    min_over_ten = lrs[i_min] / 10
    skip = max(1, len(lrs) // 10)
    lo, hi = skip, max(skip + 2, i_min + 1)
    logs = [math.log(lr) for lr in lrs]
    slopes = [
        (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1])
        for i in range(max(1, lo), min(hi, len(lrs) - 1))
    ]
    if not slopes:
        return None, min_over_ten
    i_steep = max(1, lo) + min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[i_steep], min_over_ten


def lr_find(
    cfg: TrainConfig,
    out_dir: Path | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 100,
    diverge: float = 4.0,
    beta: float = 0.98,
    rule: str = "min_over_ten",
    console: Console | None = None,
    recipe: FinetuneRecipe | None = None,
) -> LRFindResult:
    """Run the range test for `cfg`; write `lr_find.csv` / `lr_find.png` into `out_dir`.

    `out_dir` defaults to `<output.dir>/lr_find` (a later `train` into output.dir accepts
    it). Pass an already prepared `recipe` to sweep an in-memory model (its trained weights
    are restored afterwards).
    """
    if rule not in ("min_over_ten", "steepest"):
        raise ValueError(f"unknown rule {rule!r}; choose 'min_over_ten' or 'steepest'")
    if not 0 < start_lr < end_lr:
        raise ValueError("need 0 < start_lr < end_lr")
    console = console or Console(file=io.StringIO())
    if recipe is None:
        recipe = FinetuneRecipe(cfg, console)
        recipe.prepare()
    base_lr = float(recipe.cfg.optim.lr)
    console.print(f"dtype: {recipe.dtype.name} ({recipe.dtype.reason})")

    # Snapshot what the sweep changes: trained weights (a copy) and the RNG streams.
    snapshot = {id(p): p.detach().clone() for p in recipe.params}
    rng = capture_rng()
    ratio = end_lr / start_lr
    # A fresh optimizer of the sweep's own (the run's never steps). Group LRs keep their
    # relative scales (layer decay, head multiplier): factor x base.
    optimizer, schedule = recipe.new_optimizer(
        lambda s: start_lr * ratio ** (min(s, num_steps - 1) / max(1, num_steps - 1)) / base_lr
    )
    result = LRFindResult(rule=rule, dtype=recipe.dtype.name)
    try:
        step, epoch = 0, 0
        while step < num_steps and not result.stopped_early:
            for batch in recipe.plan.epoch_batches(epoch):
                stats = recipe.optimizer_step(batch, optimizer, schedule)
                loss = stats["train_loss"]
                result.lrs.append(stats["lr"])
                result.losses.append(loss)
                result.smoothed = smooth(result.losses, beta)
                step += 1
                best = min(result.smoothed)
                if not math.isfinite(loss) or result.smoothed[-1] > diverge * best:
                    result.stopped_early = True
                    break
                if step >= num_steps:
                    break
            epoch += 1
    finally:
        with torch.no_grad():
            for p in recipe.params:
                p.copy_(snapshot[id(p)])
        restore_rng(rng)
        optimizer.zero_grad(set_to_none=True)
    # Suggest from the part of the curve before divergence.
    result.steepest, result.min_over_ten = suggest(result.lrs, result.smoothed)
    result.suggested = result.steepest if rule == "steepest" else result.min_over_ten
    if recipe.proc.is_main:
        out_dir = Path(out_dir) if out_dir is not None else Path(cfg.output.dir) / "lr_find"
        result.files = write_curve(result, out_dir)
    return result


def write_curve(result: LRFindResult, out_dir: Path) -> dict[str, Path]:
    """`lr_find.csv` (step, lr, loss, smoothed_loss) and `lr_find.png` (log-x plot)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "lr_find.csv", out_dir / "lr_find.png"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, (lr, loss, sm) in enumerate(
            zip(result.lrs, result.losses, result.smoothed, strict=True)
        ):
            w.writerow([i + 1, f"{lr:.6e}", f"{loss:.6f}", f"{sm:.6f}"])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    for name, lr, color in (
        ("steepest", result.steepest, "C1"),
        ("min/10", result.min_over_ten, "C2"),
    ):
        if lr is not None:
            ax.axvline(lr, color=color, linestyle="--", label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # keep the divergence from flattening the interesting part
        lo, hi = min(finite), min(max(finite), 2.5 * min(finite) + 1e-9)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return {"csv": csv_path, "png": png_path}
