"""The fine-tuning recipe: setup -> train -> cleanup.

One class reads top to bottom. `setup` builds everything in dependency order (process group,
model and tokenizer, data, resolved hyperparameters, model surgery for the method, optimizer
and schedule, resume). `train` is the loop; it has no branch on the method or the task: full
fine-tuning, LoRA, head-only, frozen blocks and layer-wise LRs differ only in the model
surgery and the `TrainablePlan` made in setup; causal LM and classification only in the
objective (`CausalLMLoss` / `SequenceClassificationLoss`). Gradual unfreezing swaps in the
next plan between steps (`_maybe_unfreeze`), early stopping is a test after each evaluation.

Run it with `run_training(cfg)`, or `torchrun --nproc-per-node N -m tuneforge train ...` for
data parallelism (DDP; gloo on CPU, NCCL on GPU). The global batch is the same for any number
of processes: each optimizer step splits `batch_size` items into `world_size * grad_accum`
micro-batches, and the loss is normalised by the trained tokens of the whole step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tuneforge import __version__
from tuneforge.fsutil import write_json
from tuneforge.modeling.load import (
    base_causal_lm,
    find_blocks,
    load_classifier,
    load_model_and_tokenizer,
    unwrap_model,
)
from tuneforge.modeling.trainable import LoraSpec, apply_lora, build_plan
from tuneforge.training import checkpoint as ckpt
from tuneforge.training.classify import (
    SequenceClassificationLoss,
    read_classification,
    read_labels,
)
from tuneforge.training.config import TrainConfig, auto_lr, resolve_auto, save_config
from tuneforge.training.data import BatchPlan, TokenizedSet, file_sha256, tokenize_file
from tuneforge.training.lineage import Parent, read_parent, replay_indices
from tuneforge.training.loss import CausalLMLoss
from tuneforge.training.metrics import MetricsWriter
from tuneforge.training.transfer import UnfreezeSchedule, improved, trainable_spec

# Folders a fresh run may find in its output folder (written by `tuneforge lr-find`).
_SIDE_FOLDERS = {"lr_find"}


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


def build_optimizer(param_groups: list[dict], lr: float, betas, eps, device) -> torch.optim.AdamW:
    """AdamW, fused where the device supports it, else multi-tensor (foreach)."""
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, foreach=True)


class FinetuneRecipe:
    """A fine-tune (full, LoRA, head-only; frozen blocks, gradual unfreezing, layer-wise LRs;
    causal LM or classifier; fresh or continued), described entirely by a `TrainConfig`."""

    def __init__(self, cfg: TrainConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self._stop_requested = False
        self.metrics: MetricsWriter | None = None  # rank 0 only
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Everything a run needs, in dependency order, then the resume and the output folder."""
        cfg = self.cfg
        self._setup_processes()
        self.out = Path(cfg.output.dir)
        self.ckpt_root = self.out / "checkpoints"
        self.resume_from = self._resume_target()
        self._barrier()  # every process has inspected the output folder before anyone writes
        self.prepare()
        cfg = self.cfg  # resolved

        data_order = {
            "items": self.plan.n_items,
            "batch_size": self.plan.batch_size,
            "packing": self.plan.packing,
            "seq_len": self.plan.seq_len,
            "seed": cfg.seed,
            "total_steps": self.total_steps,
        }
        self.state = ckpt.TrainState(data_order=data_order, unfrozen_blocks=self.start_blocks)
        if self.resume_from is not None:
            saved = ckpt.read_state(self.resume_from)
            if saved.data_order != data_order:
                old = saved.data_order or {}
                diff = {k: (old.get(k), v) for k, v in data_order.items() if old.get(k) != v}
                raise ValueError(
                    f"cannot resume from {self.resume_from}: the run changed "
                    + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
                )
            # Reopen the blocks open at the checkpoint, group by group in the original order,
            # so the optimizer's groups line up with its saved state.
            if saved.unfrozen_blocks != self.start_blocks:
                self._unfreeze_to(saved.unfrozen_blocks, log=False)
            self.state = ckpt.load_checkpoint(
                self.resume_from, self.model, self.optimizer, self.scheduler
            )
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.resume_from is None and self.ckpt_root.exists():
                # A fresh run (output.overwrite): old checkpoints must not pass for this run's.
                shutil.rmtree(self.ckpt_root)
            save_config(cfg, self.out / "config.yaml")
            resume_step = self.state.step if self.resume_from is not None else None
            self.metrics = MetricsWriter(self.out, resume_step=resume_step)
            self._report_setup()
        self._install_signal_handlers()

    def prepare(self) -> None:
        """Model, data, hyperparameters, trainable plan and optimizer; writes nothing.

        `setup` calls it; `lr_find` calls it alone (its sweep must leave the output alone).
        """
        cfg = self.cfg
        if not hasattr(self, "device"):
            self._setup_processes()
        # Same seed on every rank: identical head and adapter init, dropout streams.
        self._seed_everything(cfg.seed)
        # Continued fine-tuning starts from the parent's weights (or its base + adapter).
        self.parent: Parent | None = read_parent(cfg.parent.model) if cfg.parent.model else None
        self.model, self.tokenizer = self._load_model()
        self.pad_id = self.tokenizer.pad_token_id

        # Data before hyperparameters: "auto" values depend on the dataset size.
        self.train_set = self._tokenize(cfg.data.train)
        self.valid_set = self._tokenize(cfg.data.valid) if cfg.data.valid else None
        if not self.train_set.examples:
            raise ValueError(f"{cfg.data.train}: no trainable example left")
        self.replay: dict[str, Any] | None = None
        if self.parent is not None and cfg.parent.replay > 0:
            self._mix_in_replay()
        unit = (
            len(
                BatchPlan.create(self.train_set.lengths, 1, 1, 1, 0, True, cfg.data.max_length).bins
            )
            if cfg.data.packing
            else len(self.train_set.examples)
        )
        self.cfg = cfg = resolve_auto(
            cfg, unit, multiple_of=cfg.optim.grad_accum * self.world_size, lr=self._parent_lr()
        )
        if cfg.optim.batch_size % (cfg.optim.grad_accum * self.world_size):
            raise ValueError(
                f"optim.batch_size ({cfg.optim.batch_size}) must be a multiple of grad_accum x "
                f"processes ({cfg.optim.grad_accum} x {self.world_size})"
            )
        self.plan = BatchPlan.create(
            self.train_set.lengths,
            cfg.optim.batch_size,
            cfg.optim.grad_accum,
            self.world_size,
            cfg.seed,
            cfg.data.packing,
            cfg.data.max_length,
        )
        if self.plan.steps_per_epoch == 0:
            raise ValueError(
                f"{unit} training items cannot fill one batch of {self.plan.n_parts} micro-batches"
            )
        self.total_steps = cfg.optim.epochs * self.plan.steps_per_epoch
        if cfg.optim.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)
        warmup = cfg.optim.warmup
        self.warmup_steps = int(warmup * self.total_steps) if warmup < 1 else int(warmup)

        # Model surgery: the only place where the method matters (an adapter parent already
        # carries its adapter).
        if cfg.method == "lora" and not hasattr(self.model, "peft_config"):
            lora = cfg.lora
            task_type = "SEQ_CLS" if cfg.task == "classify" else "CAUSAL_LM"
            self.model = apply_lora(
                self.model,
                LoraSpec(lora.r, lora.alpha, lora.dropout, lora.target_modules),
                task_type,
            )
        # What trains, in which group, at what LR: one plan from the config (freezing,
        # head-only, layer-wise LR) at the first stage of gradual unfreezing.
        self.n_blocks = len(find_blocks(self.model)[1])
        self.unfreeze = UnfreezeSchedule.from_config(cfg, self.n_blocks)
        self.start_blocks = self.unfreeze.unfrozen_blocks(0, 0) if self.unfreeze else None
        self.trainable = build_plan(
            self.model, trainable_spec(cfg, self.n_blocks, self.start_blocks)
        ).apply(self.model)
        self.n_trainable = self.trainable.counts(self.model)[0]
        if self.n_trainable == 0:
            raise ValueError("no parameter trains: check method, freeze and unfreeze settings")
        if cfg.model.gradient_checkpointing:
            base_causal_lm(self.model).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.model.train()
        self.objective = (
            SequenceClassificationLoss(self.model, len(self.labels))
            if cfg.task == "classify"
            else CausalLMLoss(self.model)
        )
        self.loss_fn = self._wrap_ddp(self.objective)
        bf16 = cfg.model.dtype == "bf16"
        self.compute_dtype = torch.bfloat16 if bf16 else torch.float32
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

        groups = self.trainable.param_groups(self.model, cfg.optim.lr)
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(
            groups, cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, self.device
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: self._lr_factor(s)
        )

    def _setup_processes(self) -> None:
        # Processes first: everything else may depend on rank and device.
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world_size > 1
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
        self.is_main = self.rank == 0

    def _lr_factor(self, step: int) -> float:
        cfg = self.cfg.optim
        return lr_lambda(step, self.warmup_steps, self.total_steps, cfg.schedule)

    def _load_model(self) -> tuple[torch.nn.Module, Any]:
        """The starting model: a base, a parent fine-tune, or a base under a classifier head."""
        cfg, parent = self.cfg, self.parent
        source = parent.weights if parent is not None else cfg.model.name_or_path
        # Trained weights stay fp32 (the optimizer updates them). A LoRA base is frozen, so
        # under bf16 autocast it is stored in bf16: half the memory, same compute.
        frozen_bf16 = cfg.method == "lora" and cfg.model.dtype == "bf16"
        dtype = "bf16" if frozen_bf16 else "fp32"
        if cfg.task == "classify":
            self.labels = cfg.classify.labels or read_labels(cfg.data.train)
            return load_classifier(
                source, self.labels, dtype, cfg.model.trust_remote_code, device=self.device
            )
        model, tokenizer = load_model_and_tokenizer(
            source, dtype, cfg.model.trust_remote_code, device=self.device
        )
        if parent is not None and parent.is_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(parent.path), is_trainable=True)
            if cfg.method != "lora":  # continue as a full (or head) fine-tune of the merge
                model = model.merge_and_unload()
        return model, tokenizer

    def _parent_lr(self) -> float | None:
        """Continued fine-tuning's "auto" LR: the parent's, lowered by parent.lr_factor."""
        if self.parent is None:
            return None
        lr = self.parent.lr or auto_lr(self.cfg.method)
        return lr * self.cfg.parent.lr_factor

    def _mix_in_replay(self) -> None:
        """Add a seeded sample of the parent's training data: parent.replay of the mix."""
        parent, fraction = self.parent, self.cfg.parent.replay
        path = parent.train_data
        if path is None or not path.is_file():
            raise ValueError(
                f"replay: the parent's training data {path} is not available "
                f"(recorded in {parent.path / 'tuneforge.json'})"
            )
        old = self._tokenize(path)
        n_new = len(self.train_set.examples)
        picked = replay_indices(n_new, fraction, len(old.examples), self.cfg.seed)
        self.train_set.examples.extend(old.examples[i] for i in picked)
        recorded = (parent.manifest or {}).get("data", {}).get("train", {}).get("sha256")
        self.replay = {
            "path": str(path),
            "sha256": file_sha256(path),
            "changed_since_parent": recorded is not None and recorded != file_sha256(path),
            "examples": len(picked),
            "fraction": len(picked) / (n_new + len(picked)),
        }

    def _wrap_ddp(self, objective: torch.nn.Module) -> torch.nn.Module:
        # DDP wraps the loss module, so its hooks see the body and the head together. It
        # registers the parameters that require grad when built: rebuilt after unfreezing.
        if not self.distributed:
            return objective
        return torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def _resume_target(self) -> Path | None:
        resume = self.cfg.checkpoint.resume
        if resume is not None and resume != "auto":
            return Path(resume)
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if resume == "auto" and latest is not None:
            return latest
        used = self.out.is_dir() and any(p.name not in _SIDE_FOLDERS for p in self.out.iterdir())
        if used and not self.cfg.output.overwrite:
            hint = "continue it with --resume auto, " if latest is not None else ""
            raise FileExistsError(
                f"output folder {self.out} is not empty; {hint}choose another folder or set "
                "output.overwrite"
            )
        return None

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)

    def _tokenize(self, path: Path) -> TokenizedSet:
        d = self.cfg.data
        if self.cfg.task == "classify":
            return read_classification(path, self.tokenizer, self.labels, d.max_length, d.too_long)
        return tokenize_file(path, self.tokenizer, d.train_on, d.max_length, d.too_long)

    def _report_setup(self) -> None:
        cfg, ts, c = self.cfg, self.train_set, self.console
        trainable, total = self.trainable.counts(self.model)
        source = f"{self.parent.path} (continued)" if self.parent else cfg.model.name_or_path
        task = f" ({len(self.labels)}-class classifier)" if cfg.task == "classify" else ""
        c.print(
            f"[bold]{cfg.method}[/] fine-tune of {source}{task}: "
            f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)"
        )
        if self.unfreeze is not None:
            c.print(
                f"gradual unfreezing: {self.state.unfrozen_blocks} of {self.n_blocks} blocks open, "
                f"one more every {self.unfreeze.every} {'step(s)' if self.unfreeze.every != 'epoch' else ''}"
                f" up to {self.unfreeze.max_blocks}"
            )
        if self.replay is not None:
            c.print(
                f"replay: {self.replay['examples']} examples of {self.replay['path']} "
                f"({100 * self.replay['fraction']:.1f}% of the mix)"
            )
        c.print(
            f"train: {len(ts.examples)} examples of {ts.n_read} "
            f"({ts.n_too_long_dropped} dropped as longer than {cfg.data.max_length} tokens, "
            f"{ts.n_truncated} truncated, {ts.n_no_target} without trained tokens), "
            f"{ts.n_trained_tokens:,} trained tokens"
        )
        pad = self._padding_fraction()
        c.print(
            f"resolved: epochs={cfg.optim.epochs} batch_size={cfg.optim.batch_size} "
            f"lr={cfg.optim.lr:g} -> {self.total_steps} steps "
            f"({self.plan.steps_per_epoch}/epoch, warmup {self.warmup_steps}); "
            f"{'packing' if cfg.data.packing else 'length-grouped batches'}, "
            f"padding {100 * pad:.1f}% of tokens; processes={self.world_size}"
        )
        if self.resume_from is not None:
            c.print(f"resumed from {self.resume_from} at step {self.state.step}")

    def _padding_fraction(self) -> float:
        real = slots = 0
        for batch in self.plan.epoch_batches(0):
            for rank in range(self.world_size):
                for items in self.plan.micro_batches(batch, rank):
                    r, s = self.plan.padding_tokens(items)
                    real, slots = real + r, slots + s
        return 1.0 - real / slots if slots else 0.0

    def _install_signal_handlers(self) -> None:
        def request_stop(signum, frame):
            self._stop_requested = True

        self._old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._old_handlers[sig] = signal.signal(sig, request_stop)

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        cfg, plan, state = self.cfg, self.plan, self.state
        examples = self.train_set.examples
        start_time = time.perf_counter() - state.elapsed
        progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.is_main,
        )
        task = progress.add_task("train", total=self.total_steps, completed=state.step, info="")
        stop_reason = None
        with progress:
            while state.step < self.total_steps and stop_reason is None:
                epoch = state.epoch
                batches = plan.epoch_batches(epoch)
                # Until this epoch ends (state.epoch moves on after its last batch).
                while state.epoch == epoch and state.step < self.total_steps:
                    self._maybe_unfreeze()  # gradual unfreezing: open the next block if due
                    t0 = time.perf_counter()
                    micro = [
                        self._collate(examples, items)
                        for items in plan.micro_batches(batches[state.step_in_epoch], self.rank)
                    ]
                    stats = self._optimizer_step(micro)
                    step_tokens = stats.pop("step_tokens")
                    state.step += 1
                    state.step_in_epoch += 1
                    state.tokens += step_tokens
                    state.elapsed = time.perf_counter() - start_time
                    record = {
                        "step": state.step,
                        "epoch": state.epoch + state.step_in_epoch / len(batches),
                        **stats,
                        "trainable_params": self.n_trainable,
                        "tokens": state.tokens,
                        "tokens_per_s": step_tokens / (time.perf_counter() - t0),
                        "elapsed": state.elapsed,
                    }
                    state.valid_loss = None
                    every = cfg.eval.eval_every
                    if self.valid_set is not None and every and state.step % every == 0:
                        record.update(self.evaluate(cfg.eval.max_examples))
                        state.valid_loss = record["valid_loss"]
                    epoch_end = state.step_in_epoch == len(batches)
                    new_best = state.valid_loss is not None and (
                        state.best_valid_loss is None or state.valid_loss < state.best_valid_loss
                    )
                    if new_best:
                        state.best_valid_loss = state.valid_loss
                    if self._patience_exhausted():
                        stop_reason = "early_stopping"
                    if self._agree(self._stop_requested):
                        stop_reason = "interrupted"
                    save = (
                        epoch_end
                        or stop_reason is not None
                        or (
                            cfg.checkpoint.save_every
                            and state.step % cfg.checkpoint.save_every == 0
                        )
                        or (new_best and cfg.checkpoint.keep_best)
                    )
                    if epoch_end:  # the saved position points at the next epoch's start
                        state.epoch, state.step_in_epoch = state.epoch + 1, 0
                    # Log before checkpointing: a resume drops records past its checkpoint, so
                    # a kill in between never loses a step's record.
                    if self.is_main:
                        self.metrics.log(record)
                        info = (
                            f"loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
                            f"{record['tokens_per_s']:,.0f} tok/s"
                        )
                        progress.update(task, completed=state.step, info=info)
                    if save:
                        self._checkpoint()
                    if stop_reason is not None:
                        break
        if stop_reason == "interrupted":
            if self.is_main:
                self.console.print(
                    f"stopped at step {state.step}; continue with --resume auto "
                    f"(checkpoint {self.last_checkpoint})"
                )
            return TrainResult(
                "stopped",
                self.out,
                state.step,
                checkpoint=self.last_checkpoint,
                stop_reason="interrupted",
            )
        return self._finish(stop_reason or "completed")

    def _collate(self, examples: list, items: list[int]) -> dict[str, torch.Tensor]:
        """One micro-batch: packed rows, or the objective's padded batch of examples."""
        if self.plan.packing:
            return self.plan.collate(examples, items, self.pad_id, self.compute_dtype)
        return self.objective.collate([examples[i] for i in items], self.pad_id)

    def _maybe_unfreeze(self) -> None:
        if self.unfreeze is None:
            return
        due = self.unfreeze.unfrozen_blocks(self.state.step, self.state.epoch)
        if due != self.state.unfrozen_blocks:
            self._unfreeze_to(due)

    def _unfreeze_to(self, blocks: int, log: bool = True) -> None:
        """Open the top `blocks` blocks, one stage at a time, each joining the optimizer as new
        parameter groups (their LR from the layer decay, fresh AdamW state)."""
        while self.state.unfrozen_blocks < blocks:
            stage = self.state.unfrozen_blocks + 1
            before = self.trainable.trainable_names()
            self.trainable = build_plan(
                self.model, trainable_spec(self.cfg, self.n_blocks, stage)
            ).apply(self.model)
            opened = self.trainable.trainable_names() - before
            for group in self.trainable.param_groups(self.model, self.cfg.optim.lr, opened):
                self._add_param_group(group)
                self.params.extend(group["params"])
            self.state.unfrozen_blocks = stage
            self.n_trainable = self.trainable.counts(self.model)[0]
            if log and self.is_main:
                what = f"block {self.n_blocks - stage}" if stage <= self.n_blocks else "embeddings"
                message = (
                    f"step {self.state.step}: unfroze {what} ({len(opened)} tensors); "
                    f"{self.n_trainable:,} parameters train"
                )
                self.metrics.event(
                    self.state.step,
                    "unfreeze",
                    message,
                    unfrozen_blocks=stage,
                    trainable_params=self.n_trainable,
                )
                self.console.print(message)
        self.loss_fn = self._wrap_ddp(self.objective)

    def _add_param_group(self, group: dict) -> None:
        # LambdaLR keeps one base LR and factor per group: extend both, and start the group at
        # the schedule's current point.
        group["initial_lr"] = group["lr"]
        self.optimizer.add_param_group(group)
        self.scheduler.base_lrs.append(group["initial_lr"])
        self.scheduler.lr_lambdas.append(self.scheduler.lr_lambdas[0])
        group["lr"] = group["initial_lr"] * self._lr_factor(self.scheduler.last_epoch)

    def _patience_exhausted(self) -> bool:
        """Early stopping: count evaluations without an improvement of min_delta."""
        es, state = self.cfg.early_stop, self.state
        if es.patience is None or state.valid_loss is None:
            return False
        if improved(state.valid_loss, state.early_stop_best, es.min_delta):
            state.early_stop_best, state.evals_without_improvement = state.valid_loss, 0
            return False
        state.evals_without_improvement += 1
        return state.evals_without_improvement >= es.patience

    def _optimizer_step(self, micro: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Forward/backward every micro-batch of one step, clip, and update the weights.

        Returns the step's train_loss, train_mean_token_accuracy, lr, grad_norm and
        step_tokens, its number of trained tokens (summed over processes).
        """
        # Normalise by the trained tokens (or examples) of the whole step, on all processes, so
        # accumulation and data parallelism equal one big batch.
        n_step = self._all_sum(sum(self.objective.n_targets(b) for b in micro))
        n = max(1, int(n_step.item()))
        scale = self.world_size / n  # DDP averages gradients over processes
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for i, batch in enumerate(micro):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            sync = i == len(micro) - 1 or not self.distributed
            with self._maybe_no_sync(sync):
                with self.autocast:  # forward only: backward runs in the forward's dtypes
                    part, _, hits = self.loss_fn(batch)
                (part * scale).backward()
            loss_sum += part.detach()
            correct += hits
        max_norm = self.cfg.optim.max_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        group = self.optimizer.param_groups[0]
        lr = group["lr"] / group.get("lr_scale", 1.0)  # the base LR, whatever group 0's scale
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct = self._all_sum(loss_sum), self._all_sum(correct)
        return {
            "train_loss": loss_sum.item() / n,
            "train_mean_token_accuracy": correct.item() / n,
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "step_tokens": int(n_step.item()),
        }

    def _checkpoint(self) -> None:
        if self.is_main:
            self.last_checkpoint = ckpt.save_checkpoint(
                self.ckpt_root,
                self.model,
                self.optimizer,
                self.scheduler,
                self.state,
                self.tokenizer,
            )
            ckpt.prune_checkpoints(
                self.ckpt_root, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_best
            )
        self._barrier()

    def _maybe_no_sync(self, sync: bool):
        return contextlib.nullcontext() if sync else self.loss_fn.no_sync()

    def _all_sum(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, device=self.device).clone()
        if self.distributed:
            dist.all_reduce(x)
        return x

    def _agree(self, flag: bool) -> bool:
        """True on every process if any process asked to stop."""
        return bool(self._all_sum(torch.tensor(int(flag))).item())

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, max_examples: int | None = None, prefix: str = "valid") -> dict[str, Any]:
        """The objective's metrics on (the first `max_examples` of) the validation set, sharded
        over processes. Causal LM: loss, perplexity, token accuracy (OpenAI's names:
        valid_loss, valid_mean_token_accuracy); classify: loss, accuracy, macro-F1, confusion.
        """
        examples = self.valid_set.examples[:max_examples]
        # Length-sorted order keeps padding low; each process takes every world_size-th batch.
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
        bs = self.cfg.eval.batch_size
        batches = [order[i : i + bs] for i in range(0, len(order), bs)][
            self.rank :: self.world_size
        ]
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        for items in batches:
            batch = self.objective.collate([examples[i] for i in items], self.pad_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self.autocast:
                part = self.objective.eval_sums(batch)
            sums = {k: sums[k] + v if k in sums else v for k, v in part.items()}
        self.model.train()
        if not sums:  # this process got no batch: contribute zeros of the right shapes
            probe = self.objective.collate([examples[order[0]]], self.pad_id)
            with self.autocast:
                shapes = self.objective.eval_sums({k: v.to(self.device) for k, v in probe.items()})
            sums = {k: torch.zeros_like(v) for k, v in shapes.items()}
        sums = {k: self._all_sum(v) for k, v in sums.items()}
        return self.objective.metrics(sums, prefix)

    # ------------------------------------------------------------------ output
    def _finish(self, stop_reason: str) -> TrainResult:
        cfg = self.cfg
        # Training is over and checkpointed: the optimizer state (2x the trained weights) is
        # not needed any more, and freeing it lowers the peak of the final evaluation and save.
        self.optimizer.state.clear()
        final: dict[str, Any] = {
            "step": self.state.step,
            "tokens": self.state.tokens,
            "stop_reason": stop_reason,
        }
        if self.is_main:
            last = _last_record(self.out)
            final.update({k: v for k, v in last.items() if k.startswith("train_")})
        best = ckpt.best_checkpoint(self.ckpt_root)
        if cfg.early_stop.patience is not None and cfg.early_stop.export_best and best is not None:
            # Export the best evaluation's weights, not the last step's.
            ckpt.load_model_weights(self.model, best)
            final["exported_step"] = ckpt.read_state(best).step
        if best is not None:
            final["best_step"] = ckpt.read_state(best).step
            final["best_valid_loss"] = ckpt.read_state(best).valid_loss
        if self.valid_set is not None:
            full = self.evaluate(None, prefix="full_valid")
            final.update(full)
            final.update({"valid" + k.removeprefix("full_valid"): v for k, v in full.items()})
        if self.is_main:
            if stop_reason == "early_stopping":
                message = (
                    f"early stopping at step {self.state.step}: valid_loss did not improve by "
                    f"{cfg.early_stop.min_delta:g} for {cfg.early_stop.patience} evaluations"
                )
                self.metrics.event(
                    self.state.step,
                    "early_stopping",
                    message,
                    **{k: final[k] for k in ("best_step", "best_valid_loss") if k in final},
                )
                self.console.print(message)
            with ckpt.staged_export(self.out) as stage:
                ckpt.save_model(self.model, stage)
                self.tokenizer.save_pretrained(str(stage))
                if cfg.output.merge:
                    # merge_and_unload folds the adapter into the base weights in place: the
                    # adapter was saved above, and this is the last use of the in-memory model.
                    merged = unwrap_model(self.model).merge_and_unload(safe_merge=True)
                    ckpt.save_model(merged, stage / "merged")
                    self.tokenizer.save_pretrained(str(stage / "merged"))
                self._write_manifest(final, stage)
            self.console.print(
                f"done ({stop_reason}): {self.state.step} steps, "
                f"{self.state.tokens:,} trained tokens"
                + (
                    f", full_valid_loss {final['full_valid_loss']:.4f}"
                    if "full_valid_loss" in final
                    else ""
                )
                + (f", exported step {final['exported_step']}" if "exported_step" in final else "")
                + f" -> {self.out}"
            )
        self._barrier()
        return TrainResult(
            "completed", self.out, self.state.step, final, self.last_checkpoint, stop_reason
        )

    def _write_manifest(self, final: dict[str, Any], folder: Path) -> None:
        cfg = self.cfg
        data: dict[str, Any] = {
            "train": {
                "path": str(cfg.data.train),
                "sha256": file_sha256(cfg.data.train),
                "examples": len(self.train_set.examples) - (self.replay or {}).get("examples", 0),
                "dropped_too_long": self.train_set.n_too_long_dropped,
                "truncated": self.train_set.n_truncated,
            }
        }
        if self.replay is not None:
            data["replay"] = self.replay
        if cfg.data.valid:
            data["valid"] = {
                "path": str(cfg.data.valid),
                "sha256": file_sha256(cfg.data.valid),
                "examples": len(self.valid_set.examples),
            }
        parent = self.parent
        manifest = {
            "tuneforge_version": __version__,
            "base_model": parent.base_model if parent is not None else cfg.model.name_or_path,
            "parent_model": str(parent.path) if parent is not None else None,
            "task": cfg.task,
            "method": cfg.method,
            "data": data,
            "config": cfg.model_dump(mode="json"),
            "metrics": final,
        }
        if cfg.task == "classify":
            manifest["labels"] = self.labels
        write_json(folder / ckpt.MANIFEST_FILE, manifest)

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        for sig, handler in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, handler)
        if self.metrics is not None:
            self.metrics.close()
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _last_record(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line] if path.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def run_training(cfg: TrainConfig, console: Console | None = None) -> TrainResult:
    """Run a whole fine-tune: setup, train, cleanup."""
    recipe = FinetuneRecipe(cfg, console)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()
