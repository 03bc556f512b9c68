"""Validation inside a run: an objective's metrics over a set of examples, sharded over the
processes (the full reports with generations and comparisons are `tuneforge.evaluation`'s)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tuneforge.training.distributed import Processes


@torch.no_grad()
def evaluate_objective(
    objective: Any,
    model: torch.nn.Module,
    examples: list,
    batch_size: int,
    pad_id: int,
    proc: Processes,
    autocast: Callable[[], Any],
    prefix: str = "valid",
) -> dict[str, Any]:
    """`objective.metrics` of its summed `eval_sums` over `examples`, with keys starting with
    `prefix`. Each process takes every world_size-th batch; the sums are added over processes.
    `model` is put in eval mode for the pass and back in train mode after it."""
    # Length-sorted order keeps padding low.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    for items in batches[proc.rank :: proc.world_size]:
        batch = objective.collate([examples[i] for i in items], pad_id)
        batch = {k: v.to(proc.device) for k, v in batch.items()}
        with autocast():
            part = objective.eval_sums(batch)
        sums = {k: sums[k] + v if k in sums else v for k, v in part.items()}
    model.train()
    if not sums:  # this process got no batch: contribute zeros of the right shapes
        probe = objective.collate([examples[order[0]]], pad_id)
        with autocast():
            shapes = objective.eval_sums({k: v.to(proc.device) for k, v in probe.items()})
        sums = {k: torch.zeros_like(v) for k, v in shapes.items()}
    sums = {k: proc.all_sum(v) for k, v in sums.items()}
    return objective.metrics(sums, prefix)
