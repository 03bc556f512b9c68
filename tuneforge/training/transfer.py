"""Transfer-learning settings of a run: the trainable spec, gradual unfreezing, early stopping.

All three are plain values the recipe consults between optimizer steps; none of them adds a
branch on the method inside the loop. Which parameters train, in which group and at what LR
is always `build_plan(model, trainable_spec(cfg, ...))` (`tuneforge.modeling.trainable`).

Example (gradual unfreezing every 10 steps, starting with the head alone, 4 blocks):
    >>> sched = UnfreezeSchedule(every=10, start_blocks=0, max_blocks=4)
    >>> [sched.unfrozen_blocks(step, epoch=0) for step in (0, 9, 10, 35, 100)]
    [0, 0, 1, 3, 4]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuneforge.modeling.trainable import TrainableSpec
from tuneforge.training.config import TrainConfig


def frozen_block_count(cfg: TrainConfig, n_blocks: int) -> int:
    """`freeze.blocks` as a number of blocks (a fraction is rounded down)."""
    blocks = cfg.freeze.blocks
    count = math.floor(blocks * n_blocks) if isinstance(blocks, float) else blocks
    return min(int(count), n_blocks)


def trainable_spec(
    cfg: TrainConfig, n_blocks: int, unfrozen_blocks: int | None = None
) -> TrainableSpec:
    """The `TrainableSpec` a config asks for, at a given stage of gradual unfreezing."""
    frozen = frozen_block_count(cfg, n_blocks)
    embeddings = cfg.freeze.embeddings if cfg.freeze.embeddings is not None else frozen > 0
    return TrainableSpec(
        method=cfg.method,
        freeze_blocks=frozen,
        freeze_embeddings=embeddings,
        freeze_patterns=tuple(cfg.freeze.patterns),
        layer_decay=cfg.optim.layer_decay,
        head_lr_scale=cfg.optim.head_lr_scale,
        unfrozen_blocks=unfrozen_blocks,
        weight_decay=cfg.optim.weight_decay,
    )


@dataclass(frozen=True)
class UnfreezeSchedule:
    """ULMFiT's gradual unfreezing: the number of top blocks allowed to train at a point.

    `every` is a number of optimizer steps, or "epoch". Stage k (k = step // every, or the
    epoch) opens `start_blocks + k` blocks, top down, up to `max_blocks`. With
    `max_blocks = n_blocks + 1` the last stage also opens the embeddings.
    """

    every: int | str
    start_blocks: int
    max_blocks: int

    @classmethod
    def from_config(cls, cfg: TrainConfig, n_blocks: int) -> UnfreezeSchedule | None:
        u = cfg.unfreeze
        if u.every is None:
            return None
        open_blocks = n_blocks - frozen_block_count(cfg, n_blocks)
        if u.depth is not None:
            max_blocks = min(u.depth, open_blocks)
        else:
            embeddings_frozen = cfg.freeze.embeddings or (
                cfg.freeze.embeddings is None and open_blocks < n_blocks
            )
            max_blocks = open_blocks + (0 if embeddings_frozen else 1)
        return cls(u.every, min(u.start_blocks, max_blocks), max_blocks)

    def unfrozen_blocks(self, step: int, epoch: int) -> int:
        """Blocks open for the optimizer step after `step` steps done, in epoch `epoch`."""
        stage = epoch if self.every == "epoch" else step // int(self.every)
        return min(self.start_blocks + stage, self.max_blocks)


def improved(value: float, best: float | None, min_delta: float, higher: bool = False) -> bool:
    """Early stopping's test: `value` beats `best` by more than `min_delta` (Keras' rule), in
    the metric's better direction (`higher`: an accuracy; else a loss, see
    `config.higher_is_better`)."""
    if best is None:
        return True
    return value > best + min_delta if higher else value < best - min_delta
