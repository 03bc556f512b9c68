"""The optimizer and the learning-rate schedule of a run.

AdamW over the trainable plan's parameter groups, and a schedule that sets every group's LR
before each optimizer step: `group["initial_lr"] x factor(step)`. The factor is the same for
all groups (linear warmup, then constant, linear or cosine decay); each group keeps its own
base LR (layer-wise decay, head multiplier). A group added mid-run (gradual unfreezing) joins
at the schedule's current point: its LR is set by the same rule from the next step on, so no
per-group bookkeeping is needed and a resumed run sets the very same LRs.

Example:
    >>> opt = build_optimizer(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    >>> schedule = LRSchedule(opt, warmup_factor(warmup=10, total=100, kind="cosine"))
    >>> ...; opt.step(); schedule.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from tuneforge.modeling.trainable import TrainablePlan, build_plan
from tuneforge.training.config import TrainConfig
from tuneforge.training.transfer import trainable_spec


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warmup, then decay to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def warmup_steps(warmup: float, total: int) -> int:
    """`optim.warmup` as a number of steps: a fraction (< 1) of `total`, or a step count."""
    return int(warmup * total) if warmup < 1 else int(warmup)


def warmup_factor(warmup: int, total: int, kind: str) -> Callable[[int], float]:
    """The training schedule's factor as a function of the step: `lr_lambda` bound."""
    return lambda step: lr_lambda(step, warmup, total, kind)


def build_optimizer(
    param_groups: list[dict[str, Any]],
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> torch.optim.AdamW:
    """AdamW, fused where the device supports it, else multi-tensor (foreach)."""
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, foreach=True)


class LRSchedule:
    """Sets each group's LR to its base LR (`initial_lr`) x `factor(step)`.

    `step()` after each optimizer step, like a torch scheduler; `state_dict` holds the step
    only (the groups' base LRs live in the optimizer's own state), under LambdaLR's key
    `last_epoch`, so checkpoints written with LambdaLR load too.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]):
        self.optimizer = optimizer
        self.factor = factor
        self.last_step = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        """Move to the next optimizer step and set its LRs."""
        self.last_step += 1
        self._apply()

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group (its `lr` is its base LR) at the schedule's current point."""
        group["initial_lr"] = group["lr"]
        self.optimizer.add_param_group(group)
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_epoch"])
        self._apply()


def open_stage(
    model: torch.nn.Module,
    cfg: TrainConfig,
    n_blocks: int,
    stage: int,
    trainable: TrainablePlan,
    schedule: LRSchedule,
) -> tuple[TrainablePlan, int]:
    """Gradual unfreezing's stage `stage` (top blocks open): the new plan, applied to `model`,
    and how many tensors it opened. They join the optimizer as new groups (their LR from the
    layer decay, fresh AdamW state) at the schedule's current point."""
    before = trainable.trainable_names()
    trainable = build_plan(model, trainable_spec(cfg, n_blocks, stage)).apply(model)
    opened = trainable.trainable_names() - before
    for group in trainable.param_groups(model, cfg.optim.lr, opened):
        schedule.add_param_group(group)
    return trainable, len(opened)
