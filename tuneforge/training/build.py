"""The inputs `FinetuneRecipe.prepare` builds before the model surgery, in its order.

- `load_start_model`: the starting model (a base, a parent fine-tune, or a base under a
  classifier head) and its tokenizer;
- `tokenize_data` / `mix_in_replay`: a data file as trainable examples, and a seeded sample of
  the parent's training data mixed in (continued fine-tuning against forgetting);
- `resolve_config`: the config with its "auto" values set from the data;
- `make_plan` / `data_order` / `check_same_order`: the batches of every epoch and the run's
  length, and what a resumed run must find unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuneforge.modeling.dtype import DTypeChoice, resolve_dtype
from tuneforge.modeling.load import load_classifier, load_model_and_tokenizer
from tuneforge.modeling.trainable import (
    TrainablePlan,
    build_plan,
    hold_dtypes,
    skip_adapter_input_casts,
)
from tuneforge.training.classify import read_classification
from tuneforge.training.config import TrainConfig, auto_lr, resolve_auto
from tuneforge.training.data import BatchPlan, TokenizedSet, file_sha256, tokenize_file
from tuneforge.training.distributed import Processes
from tuneforge.training.dpo import read_preferences
from tuneforge.training.lineage import Parent, replay_indices
from tuneforge.training.transfer import trainable_spec


def resolve_run_dtype(requested: str, proc: Processes) -> DTypeChoice:
    """model.dtype as the run's compute dtype ("auto": decided by the device's probe, see
    `tuneforge.modeling.dtype`). All processes take the same: fp32 if any of them would not
    run bf16."""
    choice = resolve_dtype(requested, proc.device)
    if proc.distributed and proc.agree(choice.name != "bf16") and choice.name == "bf16":
        choice = DTypeChoice("fp32", "another process resolved fp32")
    return choice


def hold_bf16(
    model: torch.nn.Module, cfg: TrainConfig, plan: TrainablePlan, n_blocks: int, unfreezes: bool
) -> None:
    """A bf16 run's parameter dtypes: what never trains in this run held in bf16, what trains
    (at any stage of gradual unfreezing: `unfreezes`) in fp32 for the optimizer, and LoRA
    layers without peft's input casts (autocast casts to bf16 anyway).

    Full fine-tuning keeps its trained weights in fp32 and computes under bf16 autocast, which
    casts each weight to bf16 once per forward: no separate fp32 master copy to keep in step,
    and the cast is small next to the step's matmuls.
    """
    if unfreezes:  # blocks opened later train in fp32 from the start
        plan = build_plan(model, trainable_spec(cfg, n_blocks, None))
    hold_dtypes(model, plan.trainable_names(), torch.bfloat16)
    skip_adapter_input_casts(model)


def load_start_model(
    cfg: TrainConfig,
    parent: Parent | None,
    labels: list[str] | None,
    device: torch.device,
    compute: str = "fp32",
) -> tuple[torch.nn.Module, Any]:
    """The starting model: a base, a parent fine-tune, or a base under a classifier head
    (`labels` given), for a run computing in `compute` ("fp32" or "bf16", resolved).

    A LoRA base is frozen whole, so in bf16 it is loaded in bf16 straight away: no fp32 copy
    ever exists (peft then adds fp32 adapters). Other methods load in fp32, the trained
    weights' dtype; `hold_dtypes` later moves what stays frozen to bf16.
    """
    source = parent.weights if parent is not None else cfg.model.name_or_path
    dtype = "bf16" if cfg.method == "lora" and compute == "bf16" else "fp32"
    if labels is not None:
        return load_classifier(source, labels, dtype, cfg.model.trust_remote_code, device=device)
    model, tokenizer = load_model_and_tokenizer(
        source, dtype, cfg.model.trust_remote_code, device=device
    )
    if parent is not None and parent.is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(parent.path), is_trainable=True)
        if cfg.method != "lora":  # continue as a full (or head) fine-tune of the merge
            model = model.merge_and_unload()
    return model, tokenizer


def tokenize_data(
    cfg: TrainConfig, path: str | Path, tokenizer: Any, labels: list[str] | None
) -> TokenizedSet:
    """A data file's trainable examples: chat/text examples, labelled ones for a classifier, or
    preference pairs for DPO."""
    d = cfg.data
    if labels is not None:
        return read_classification(path, tokenizer, labels, d.max_length, d.too_long)
    if cfg.task == "dpo":
        return read_preferences(path, tokenizer, d.max_length, d.too_long)
    return tokenize_file(path, tokenizer, d.train_on, d.max_length, d.too_long)


def mix_in_replay(
    cfg: TrainConfig,
    parent: Parent,
    train_set: TokenizedSet,
    tokenize: Callable[[Path], TokenizedSet],
) -> dict[str, Any]:
    """Add a seeded sample of the parent's training data (parent.replay of the mix) to
    `train_set`; return what was added, for the manifest."""
    fraction = cfg.parent.replay
    path = parent.train_data
    if path is None or not path.is_file():
        raise ValueError(
            f"replay: the parent's training data {path} is not available "
            f"(recorded in {parent.path / 'tuneforge.json'})"
        )
    old = tokenize(path)
    n_new = len(train_set.examples)
    picked = replay_indices(n_new, fraction, len(old.examples), cfg.seed)
    train_set.examples.extend(old.examples[i] for i in picked)
    recorded = (parent.manifest or {}).get("data", {}).get("train", {}).get("sha256")
    return {
        "path": str(path),
        "sha256": file_sha256(path),
        "changed_since_parent": recorded is not None and recorded != file_sha256(path),
        "examples": len(picked),
        "fraction": len(picked) / (n_new + len(picked)),
    }


def resolve_config(
    cfg: TrainConfig,
    train_set: TokenizedSet,
    parent: Parent | None,
    world_size: int,
    width: int | None = None,
) -> TrainConfig:
    """The config with its "auto" values (epochs, batch size, LR) set from the data and the
    model's width (hidden size).

    The unit of the data is an example, or a packed row with packing. Continued fine-tuning's
    "auto" LR is the parent's, lowered by parent.lr_factor, when the parent trained the same
    task; else the task's own (`auto_lr`).
    """
    unit = (
        len(BatchPlan.create(train_set.lengths, 1, 1, 1, 0, True, cfg.data.max_length).bins)
        if cfg.data.packing
        else len(train_set.examples)
    )
    parent_lr = None
    # The parent's LR says what suits this objective only if it trained the same one (an SFT
    # parent's LR is ten times DPO's): otherwise the task's own "auto" rule.
    parent_task = ((parent.manifest or {}).get("task") or "causal_lm") if parent else None
    if parent is not None and parent_task == cfg.task:
        parent_lr = (parent.lr or auto_lr(cfg.method, width, cfg.task)) * cfg.parent.lr_factor
    multiple = cfg.optim.grad_accum * world_size
    cfg = resolve_auto(cfg, unit, multiple_of=multiple, lr=parent_lr, width=width)
    if cfg.optim.batch_size % multiple:
        raise ValueError(
            f"optim.batch_size ({cfg.optim.batch_size}) must be a multiple of grad_accum x "
            f"processes ({cfg.optim.grad_accum} x {world_size})"
        )
    return cfg


def make_plan(cfg: TrainConfig, train_set: TokenizedSet, world_size: int) -> tuple[BatchPlan, int]:
    """The batches of every epoch (resolved config), and the run's length in optimizer steps."""
    plan = BatchPlan.create(
        train_set.lengths,
        cfg.optim.batch_size,
        cfg.optim.grad_accum,
        world_size,
        cfg.seed,
        cfg.data.packing,
        cfg.data.max_length,
    )
    if plan.steps_per_epoch == 0:
        raise ValueError(
            f"{plan.n_items} training items cannot fill one batch of {plan.n_parts} micro-batches"
        )
    total_steps = cfg.optim.epochs * plan.steps_per_epoch
    if cfg.optim.max_steps is not None:
        total_steps = min(total_steps, cfg.optim.max_steps)
    return plan, total_steps


def data_order(plan: BatchPlan, seed: int, total_steps: int) -> dict[str, Any]:
    """What fixes the order of the batches: a resume must find it unchanged."""
    return {
        "items": plan.n_items,
        "batch_size": plan.batch_size,
        "packing": plan.packing,
        "seq_len": plan.seq_len,
        "seed": seed,
        "total_steps": total_steps,
    }


def check_same_order(
    path: Path, saved: dict[str, Any] | None, order: dict[str, Any] | None
) -> None:
    """Refuse to resume from the checkpoint at `path` if the batches' order changed."""
    if saved != order:
        old = saved or {}
        diff = {k: (old.get(k), v) for k, v in (order or {}).items() if old.get(k) != v}
        raise ValueError(
            f"cannot resume from {path}: the run changed "
            + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
        )
