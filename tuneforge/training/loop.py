"""The fine-tuning recipe: setup -> train -> cleanup.

One class reads top to bottom. `setup` builds everything in dependency order (process group,
model and tokenizer, data, resolved hyperparameters, model surgery for the method, optimizer
and schedule, resume). `train` is the loop; it has no branch on the method: full fine-tuning
and LoRA differ only in the model surgery and `TrainablePlan` done in setup.

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
from tuneforge.modeling.load import base_causal_lm, load_model_and_tokenizer, unwrap_model
from tuneforge.modeling.trainable import LoraSpec, apply_lora, plan_for_method
from tuneforge.tokenize import IGNORE_INDEX, collate_padded
from tuneforge.training import checkpoint as ckpt
from tuneforge.training.config import TrainConfig, resolve_auto, save_config
from tuneforge.training.data import BatchPlan, TokenizedSet, file_sha256, tokenize_file
from tuneforge.training.loss import CausalLMLoss
from tuneforge.training.metrics import MetricsWriter


@dataclass
class TrainResult:
    """What a run produced."""

    status: str  # "completed" or "stopped"
    output_dir: Path
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


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
    """A full or LoRA fine-tune of a causal LM, described entirely by a `TrainConfig`."""

    def __init__(self, cfg: TrainConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self._stop_requested = False
        self.metrics: MetricsWriter | None = None  # rank 0 only
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        # Processes first: everything below may depend on rank and device.
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
        self.out = Path(cfg.output.dir)
        self.ckpt_root = self.out / "checkpoints"
        self.resume_from = self._resume_target()
        self._barrier()  # every process has inspected the output folder before anyone writes

        # Same seed on every rank: identical adapter init and dropout streams.
        self._seed_everything(cfg.seed)
        # Trained weights stay fp32 (the optimizer updates them). A LoRA base is frozen, so
        # under bf16 autocast it is stored in bf16: half the memory, same compute.
        frozen_bf16 = cfg.method == "lora" and cfg.model.dtype == "bf16"
        self.model, self.tokenizer = load_model_and_tokenizer(
            cfg.model.name_or_path,
            "bf16" if frozen_bf16 else "fp32",
            cfg.model.trust_remote_code,
            device=self.device,
        )
        self.pad_id = self.tokenizer.pad_token_id

        # Data before hyperparameters: "auto" values depend on the dataset size.
        self.train_set = self._tokenize(cfg.data.train, "train")
        self.valid_set = self._tokenize(cfg.data.valid, "valid") if cfg.data.valid else None
        if not self.train_set.examples:
            raise ValueError(f"{cfg.data.train}: no trainable example left")
        unit = (
            len(
                BatchPlan.create(self.train_set.lengths, 1, 1, 1, 0, True, cfg.data.max_length).bins
            )
            if cfg.data.packing
            else len(self.train_set.examples)
        )
        self.cfg = cfg = resolve_auto(cfg, unit, multiple_of=cfg.optim.grad_accum * self.world_size)
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

        # Model surgery: the only place where the method matters.
        if cfg.method == "lora":
            lora = cfg.lora
            self.model = apply_lora(
                self.model, LoraSpec(lora.r, lora.alpha, lora.dropout, lora.target_modules)
            )
        self.trainable = plan_for_method(self.model, cfg.method, cfg.optim.weight_decay)
        self.trainable.apply(self.model)
        if cfg.model.gradient_checkpointing:
            base_causal_lm(self.model).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.model.train()
        # DDP wraps the loss module, so its hooks see the body and the chunked head together.
        self.loss_fn = CausalLMLoss(self.model)
        if self.distributed:
            self.loss_fn = torch.nn.parallel.DistributedDataParallel(
                self.loss_fn, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        bf16 = cfg.model.dtype == "bf16"
        self.compute_dtype = torch.bfloat16 if bf16 else torch.float32
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

        groups = self.trainable.param_groups(self.model, cfg.optim.lr)
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(
            groups, cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, self.device
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, self.warmup_steps, self.total_steps, cfg.optim.schedule),
        )

        data_order = {
            "items": self.plan.n_items,
            "batch_size": self.plan.batch_size,
            "packing": self.plan.packing,
            "seq_len": self.plan.seq_len,
            "seed": cfg.seed,
            "total_steps": self.total_steps,
        }
        self.state = ckpt.TrainState(data_order=data_order)
        if self.resume_from is not None:
            saved = ckpt.read_state(self.resume_from).data_order
            if saved != data_order:
                diff = {k: (saved.get(k), v) for k, v in data_order.items() if saved.get(k) != v}
                raise ValueError(
                    f"cannot resume from {self.resume_from}: the run changed "
                    + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
                )
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

    def _resume_target(self) -> Path | None:
        resume = self.cfg.checkpoint.resume
        if resume is not None and resume != "auto":
            return Path(resume)
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if resume == "auto" and latest is not None:
            return latest
        used = self.out.is_dir() and any(self.out.iterdir())
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

    def _tokenize(self, path: Path, name: str) -> TokenizedSet:
        d = self.cfg.data
        return tokenize_file(path, self.tokenizer, d.train_on, d.max_length, d.too_long)

    def _report_setup(self) -> None:
        cfg, ts, c = self.cfg, self.train_set, self.console
        trainable, total = self.trainable.counts(self.model)
        c.print(
            f"[bold]{cfg.method}[/] fine-tune of {cfg.model.name_or_path}: "
            f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)"
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
        stopped = False
        with progress:
            while state.step < self.total_steps and not stopped:
                batches = plan.epoch_batches(state.epoch)
                while state.step_in_epoch < len(batches) and state.step < self.total_steps:
                    t0 = time.perf_counter()
                    micro = [
                        plan.collate(examples, items, self.pad_id, self.compute_dtype)
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
                    stopped = self._agree(self._stop_requested)
                    save = (
                        epoch_end
                        or stopped
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
                    if stopped:
                        break
        if stopped:
            if self.is_main:
                self.console.print(
                    f"stopped at step {state.step}; continue with --resume auto "
                    f"(checkpoint {self.last_checkpoint})"
                )
            return TrainResult("stopped", self.out, state.step, checkpoint=self.last_checkpoint)
        return self._finish()

    def _optimizer_step(self, micro: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Forward/backward every micro-batch of one step, clip, and update the weights.

        Returns the step's train_loss, train_mean_token_accuracy, lr, grad_norm and
        step_tokens, its number of trained tokens (summed over processes).
        """
        # Normalise by the trained tokens of the whole step, on all processes, so accumulation
        # and data parallelism equal one big batch.
        n_step = self._all_sum(sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in micro))
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
    def evaluate(self, max_examples: int | None = None, prefix: str = "valid") -> dict[str, float]:
        """Loss, perplexity and token accuracy on (the first `max_examples` of) the validation
        set, sharded over processes. Names follow OpenAI: valid_loss, valid_mean_token_accuracy.
        """
        examples = self.valid_set.examples[:max_examples]
        # Length-sorted order keeps padding low; each process takes every world_size-th batch.
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
        bs = self.cfg.eval.batch_size
        batches = [order[i : i + bs] for i in range(0, len(order), bs)][
            self.rank :: self.world_size
        ]
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        n = torch.zeros((), device=self.device, dtype=torch.long)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        module = self.loss_fn.module if self.distributed else self.loss_fn
        for items in batches:
            batch = collate_padded([examples[i] for i in items], self.pad_id, pad_to_multiple_of=8)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self.autocast:
                part, k, hits = module(batch)
            loss_sum, n, correct = loss_sum + part, n + k, correct + hits
        self.model.train()
        loss_sum, n, correct = self._all_sum(loss_sum), self._all_sum(n), self._all_sum(correct)
        loss = loss_sum.item() / max(1, n.item())
        return {
            f"{prefix}_loss": loss,
            f"{prefix}_perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}_mean_token_accuracy": correct.item() / max(1, n.item()),
        }

    # ------------------------------------------------------------------ output
    def _finish(self) -> TrainResult:
        cfg = self.cfg
        # Training is over and checkpointed: the optimizer state (2x the trained weights) is
        # not needed any more, and freeing it lowers the peak of the final evaluation and save.
        self.optimizer.state.clear()
        final: dict[str, Any] = {"step": self.state.step, "tokens": self.state.tokens}
        if self.is_main:
            last = _last_record(self.out)
            final.update({k: v for k, v in last.items() if k.startswith("train_")})
        if self.valid_set is not None:
            full = self.evaluate(None, prefix="full_valid")
            final.update(full)
            final["valid_loss"] = full["full_valid_loss"]
            final["valid_mean_token_accuracy"] = full["full_valid_mean_token_accuracy"]
        if self.is_main:
            ckpt.save_model(self.model, self.out)
            self.tokenizer.save_pretrained(str(self.out))
            if cfg.output.merge:
                # merge_and_unload folds the adapter into the base weights in place: the adapter
                # was saved above, and this is the last use of the in-memory model.
                merged = unwrap_model(self.model).merge_and_unload(safe_merge=True)
                ckpt.save_model(merged, self.out / "merged")
                self.tokenizer.save_pretrained(str(self.out / "merged"))
            self._write_manifest(final)
            self.console.print(
                f"done: {self.state.step} steps, {self.state.tokens:,} trained tokens"
                + (
                    f", full_valid_loss {final['full_valid_loss']:.4f}"
                    if "full_valid_loss" in final
                    else ""
                )
                + f" -> {self.out}"
            )
        self._barrier()
        return TrainResult("completed", self.out, self.state.step, final, self.last_checkpoint)

    def _write_manifest(self, final: dict[str, Any]) -> None:
        cfg = self.cfg
        data = {
            "train": {
                "path": str(cfg.data.train),
                "sha256": file_sha256(cfg.data.train),
                "examples": len(self.train_set.examples),
                "dropped_too_long": self.train_set.n_too_long_dropped,
                "truncated": self.train_set.n_truncated,
            }
        }
        if cfg.data.valid:
            data["valid"] = {
                "path": str(cfg.data.valid),
                "sha256": file_sha256(cfg.data.valid),
                "examples": len(self.valid_set.examples),
            }
        manifest = {
            "tuneforge_version": __version__,
            "base_model": cfg.model.name_or_path,
            "parent_model": None,
            "method": cfg.method,
            "data": data,
            "config": cfg.model_dump(mode="json"),
            "metrics": final,
        }
        (self.out / "tuneforge.json").write_text(json.dumps(manifest, indent=2))

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
